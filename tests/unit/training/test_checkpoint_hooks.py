"""Checkpoint hooks (``hooks.json``), extra ``state`` keys, and the refusal of a checkpoint
written by another process count or sharding mode — one process, a tiny torch model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rmkit.errors import RmkitError
from rmkit.training.checkpoint import (
    check_compatible,
    hooks_state,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from rmkit.training.engine import add_checkpoint_hook


class FakeAccel:
    """The single-process surface of an Accelerator that checkpoints use."""

    is_main_process = True
    process_index = 0
    num_processes = 1
    distributed_type = "DistributedType.NO"

    def wait_for_everyone(self) -> None:
        pass

    def unwrap_model(self, model):
        return model


class QueueHook:
    """A stand-in for loop state outside the model (e.g. an asynchronous rollout queue)."""

    def __init__(self, name: str = "rollout_queue", position: int = 0) -> None:
        self.name = name
        self.position = position
        self.pending: list[str] = []

    def state_dict(self) -> dict:
        return {"position": self.position, "pending": list(self.pending)}

    def load_state_dict(self, d: dict) -> None:
        self.position = d["position"]
        self.pending = list(d["pending"])


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


def write(tmp_path, hooks, step: int = 2, **extra):
    model, opt, sched = tiny_training()
    state = {"output": str(tmp_path), "metrics_offset": 7, "epoch": 0, "index": 4, **extra}
    return save_checkpoint(FakeAccel(), model, opt, sched, step, state, keep_last=2, hooks=hooks)


def test_hooks_and_extra_state_round_trip(tmp_path):
    hook = QueueHook(position=5)
    hook.pending = ["p1", "p2"]
    folder = write(tmp_path, [hook], queue_version=3)
    assert json.loads((folder / "hooks.json").read_text()) == {
        "rollout_queue": {"position": 5, "pending": ["p1", "p2"]}
    }
    saved = json.loads((folder / "state.json").read_text())
    assert saved["sharding"] == "none" and saved["world_size"] == 1
    assert "output" not in saved

    model, opt, sched = tiny_training()
    state = load_checkpoint(FakeAccel(), model, opt, sched, latest_checkpoint(tmp_path))
    assert state["queue_version"] == 3 and state["metrics_offset"] == 7 and state["step"] == 2

    # a resumed run restores a hook when it is registered, before its first step
    run = SimpleNamespace(extras={}, resumed_from=folder)
    fresh = QueueHook()
    add_checkpoint_hook(run, fresh)
    assert (fresh.position, fresh.pending) == (5, ["p1", "p2"])


def test_a_new_hook_missing_from_the_checkpoint_starts_fresh(tmp_path, caplog):
    folder = write(tmp_path, [])
    assert not (folder / "hooks.json").exists()
    run = SimpleNamespace(extras={}, resumed_from=folder)
    hook = QueueHook(position=1)
    add_checkpoint_hook(run, hook)
    assert hook.position == 1
    assert "holds no state for hook 'rollout_queue'" in caplog.text


def test_a_fresh_run_registers_hooks_without_restoring():
    run = SimpleNamespace(extras={}, resumed_from=None)
    hook = QueueHook(position=4)
    add_checkpoint_hook(run, hook)
    assert hook.position == 4 and run.extras["checkpoint_hooks"] == [hook]


def test_hook_state_must_be_json_with_unique_names():
    class Bad(QueueHook):
        def state_dict(self) -> dict:
            return {"when": object()}

    with pytest.raises(RmkitError, match="not JSON"):
        hooks_state([Bad()])
    with pytest.raises(RmkitError, match="unique string `name`"):
        hooks_state([QueueHook(), QueueHook()])
    assert hooks_state([QueueHook("a", 1), QueueHook("b", 2)]) == {
        "a": {"position": 1, "pending": []},
        "b": {"position": 2, "pending": []},
    }


@pytest.mark.parametrize(
    ("saved", "match"),
    [
        ({"world_size": 2, "sharding": "none"}, "written by 2 process"),
        ({"world_size": 1, "sharding": "fsdp2"}, "sharding 'fsdp2', this run uses 'none'"),
        ({"world_size": 1, "sharding": "deepspeed-zero3"}, "sharding 'deepspeed-zero3'"),
    ],
)
def test_a_checkpoint_of_another_launch_is_refused(tmp_path, saved, match):
    with pytest.raises(RmkitError, match=match):
        check_compatible(FakeAccel(), tmp_path, {"step": 2, **saved})
    check_compatible(FakeAccel(), tmp_path, {"step": 2})  # before sharding was recorded: none


def test_load_refuses_before_touching_the_model(tmp_path):
    folder = write(tmp_path, [])
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "sharding": "fsdp2"}))
    model, opt, sched = tiny_training()
    before = model.weight.detach().clone()
    with pytest.raises(RmkitError, match="sharding 'fsdp2'"):
        load_checkpoint(FakeAccel(), model, opt, sched, folder)
    assert bool((model.weight == before).all())
