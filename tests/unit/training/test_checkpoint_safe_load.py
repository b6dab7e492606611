"""SECURITY-REVIEW L1: ``--resume`` loads checkpoint files with ``torch.load(weights_only=True)``.

A crafted ``optimizer.pt`` / ``scheduler.pt`` / ``rng-rank0.pt`` whose unpickling would run code
is refused with an error naming the file, and the code does not run; RNG states are stored as
plain data so that rmkit's own checkpoints load under ``weights_only`` (older RNG files holding
numpy arrays still load).
"""

from __future__ import annotations

import random

import pytest

from rmkit.errors import RmkitError
from rmkit.training.checkpoint import load_checkpoint, rng_state, safe_load, save_checkpoint


class FakeAccel:
    is_main_process = True
    process_index = 0
    num_processes = 1
    distributed_type = "DistributedType.NO"

    def wait_for_everyone(self) -> None:
        pass

    def unwrap_model(self, model):
        return model


def tiny_training():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def write(output, hooks, step: int = 2):
    model, opt, sched = tiny_training()
    state = {"output": str(output), "metrics_offset": 0, "epoch": 0, "index": 0}
    return save_checkpoint(FakeAccel(), model, opt, sched, step, state, keep_last=2, hooks=hooks)


class Evil:
    """Unpickling this opens (creates) the marker file: stands for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def craft(path, marker) -> None:
    import torch

    torch.save({"state": {}, "param_groups": [], "payload": Evil(str(marker))}, path)


def test_the_crafted_file_does_run_code_under_an_unsafe_load(tmp_path):
    """Control: the payload is real (the pre-fix ``weights_only=False`` load ran it)."""
    import torch

    marker = tmp_path / "PWNED-control"
    craft(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng-rank0.pt"])
def test_resume_refuses_a_checkpoint_file_that_would_run_code(tmp_path, name):
    folder = write(tmp_path / "run", [])
    marker = tmp_path / "PWNED"
    craft(folder / name, marker)
    model, opt, sched = tiny_training()
    with pytest.raises(RmkitError, match=rf"refusing to load .*{name}"):
        load_checkpoint(FakeAccel(), model, opt, sched, folder)
    assert not marker.exists()


def test_rng_states_round_trip_exactly_under_weights_only(tmp_path):
    import numpy as np
    import torch

    folder = write(tmp_path, [])
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(rng_state(), folder / "rng-rank0.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    model, opt, sched = tiny_training()
    load_checkpoint(FakeAccel(), model, opt, sched, folder)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_an_older_rng_file_with_numpy_arrays_still_loads(tmp_path):
    import numpy as np
    import torch

    np.random.seed(5)
    legacy = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    torch.save(legacy, tmp_path / "rng-rank0.pt")
    with pytest.raises(RmkitError, match="refusing to load"):
        safe_load(tmp_path / "rng-rank0.pt")  # numpy is allowed only for RNG files
    loaded = safe_load(tmp_path / "rng-rank0.pt", legacy_numpy=True)
    assert loaded["numpy"][0] == "MT19937"
