"""The local engine's generator process, for asynchronous rollouts (``max_staleness`` >= 1).

A child process (``multiprocessing`` spawn) builds the policy exactly as the trainer does
(:func:`rmkit.training.model.build_policy`: same base, same adapter layout) and generates with
the local backend exactly as the synchronous local engine does (same
:class:`~rmkit.generation.hf.HFBackend` batch size, decoder, seeds, LoRA folding and rollout
dtype), on ``rl.rollout.threads`` CPU threads; the trainer keeps the rest. So a rollout
generated here with the weights of policy version v is the rollout the synchronous local engine
would have generated with those weights.

Weights: at each sync the trainer writes its trainable parameters (the LoRA adapter, or every
weight) to ``<sync_dir>/v<version>.safetensors``; the child loads them into a store of
versions and puts the requested version's values into its model before generating. It keeps
the newest ``keep_adapters`` versions (at least ``max_staleness + 1``).

Messages (one pipe, the parent sends, a reader thread receives): ``("load", version, path)``,
``("drop", below)``, ``("gen", job, conversations, sampling params, version)`` ->
``("done", job, completions, seconds)`` or ``("error", job, message)``, ``("stop",)``. The child
asks the kernel for SIGTERM when its parent dies and also exits when the pipe closes, so it
never outlives the run.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from rmkit.errors import RmkitError

log = logging.getLogger(__name__)


class GeneratorEngine:
    """Asynchronous rollouts from a local generator process (see the module docstring)."""

    name = "local-async"

    def __init__(self, run, sync_dir: Path):
        import multiprocessing as mp

        import torch

        cfg = run.cfg
        ro = cfg.rl.rollout
        self.keep = ro.keep_adapters  # the config raises it to max_staleness + 1
        self.sync_dir = sync_dir
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self.versions: list[int] = []
        self.version: int | None = None
        self.pending: dict[int, Future] = {}
        self._jobs = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        cores = os.cpu_count() or 2
        threads = ro.threads or max(1, cores // 2)
        trainer = max(1, cores - threads)
        if not torch.cuda.is_available():
            torch.set_num_threads(trainer)
        options = {
            "threads": threads,
            "batch_size": ro.batch_size or cfg.sequences_per_device,
            "decoder": ro.decoder,
            "dtype": ro.dtype,
            "merge": ro.merge_lora and cfg.weights.mode == "lora",
            "device": str(run.accel.device),
        }
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_child_main,
            args=(child, cfg.model_dump(mode="json"), options),
            name="rmkit-generator",
            daemon=True,
        )
        self.process.start()
        child.close()
        log.info(
            "asynchronous local rollouts: generator process %d with %d thread(s), the trainer "
            "with %d", self.process.pid, threads, trainer,
        )  # fmt: skip
        try:
            self._wait_ready(600.0)
        except BaseException:
            self.close()
            raise
        self._reader = threading.Thread(
            target=self._read, name="rmkit-generator-reader", daemon=True
        )
        self._reader.start()

    # ------------------------------------------------------------------ process plumbing

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._conn.poll(0.5):
                msg = self._conn.recv()
                if msg[0] == "ready":
                    return
                raise RmkitError(f"the generator process failed to start: {msg[-1]}")
            if not self.process.is_alive():
                raise RmkitError(
                    f"the generator process exited with code {self.process.exitcode} while "
                    "loading the policy"
                )
        raise RmkitError(f"the generator process did not load the policy within {timeout:g}s")

    def _read(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            kind, job = msg[0], msg[1]
            with self._lock:
                future = self.pending.pop(job, None)
            if future is None:
                continue
            if kind == "done":
                from rmkit.generation.base import Completion

                rows = [[Completion.from_dict(c) for c in row] for row in msg[2]]
                future.set_result((rows, msg[3]))
            else:
                future.set_exception(RmkitError(f"the generator process failed: {msg[2]}"))
        with self._lock:  # the process is gone: nothing pending will be answered
            pending, self.pending = list(self.pending.values()), {}
        for future in pending:
            if not future.done():
                future.set_exception(
                    RmkitError(
                        f"the generator process exited (code {self.process.exitcode}) with "
                        "rollouts still to generate"
                    )
                )

    def _send(self, *msg) -> None:
        if not self.process.is_alive():
            raise RmkitError(
                f"the generator process exited with code {self.process.exitcode} during the run"
            )
        self._conn.send(msg)

    # ------------------------------------------------------------------ engine interface

    def prepare(self, run) -> dict[str, float]:  # pragma: no cover - async engines only
        raise RmkitError("the generator process serves asynchronous rollouts only")

    def sync(self, run, version: int) -> dict[str, float]:
        """Give the generator the current trainable weights as policy ``version``."""
        from safetensors.torch import save_file

        from rmkit.training.engine import sharded

        t0 = time.perf_counter()
        accel = run.accel
        model = run.unwrapped
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if sharded(accel):
            full = accel.get_state_dict(run.model)
            state = {n: full[n] for n in names if n in full}
        else:
            state = {n: p for n, p in model.named_parameters() if p.requires_grad}
        path = self.sync_dir / f"v{version}.safetensors"
        if accel.is_main_process:
            tmp = path.with_name(f".tmp-{path.name}")
            save_file({n: t.detach().to("cpu").contiguous() for n, t in state.items()}, str(tmp))
            os.replace(tmp, path)
        accel.wait_for_everyone()
        self._send("load", version, str(path))
        self.versions.append(version)
        if len(self.versions) > self.keep:
            self.versions = self.versions[-self.keep :]
            self._send("drop", self.versions[0])
            if accel.is_main_process:
                for old in self.sync_dir.glob("v*.safetensors"):
                    if int(old.stem[1:]) < self.versions[0]:
                        old.unlink(missing_ok=True)
        self.version = version
        return {"sync_s": time.perf_counter() - t0}

    def submit(self, convs: list[list[dict]], params, version: int) -> Future:
        if version not in self.versions:
            raise RmkitError(f"policy version {version} is not in the generator ({self.versions})")
        job = next(self._jobs)
        future: Future = Future()
        with self._lock:
            self.pending[job] = future
        self._send("gen", job, convs, dataclasses.asdict(params), version)
        return future

    def wait_pending(self) -> None:
        import concurrent.futures

        with self._lock:
            futures = list(self.pending.values())
        concurrent.futures.wait(futures)

    def checked(self, run, convs, per_prompt, gen_s: float, version) -> tuple[list, dict]:
        """The rollout and its stats (the tokens come from the trainer's own tokenizer and
        template, and image placeholders are suppressed as in the local engine)."""
        for row in per_prompt:
            for c in row:
                c.policy_version = version
        stats = {
            "generator_s": gen_s,
            "policy_version": float(version),
            "staleness": float(run.step - version),
        }
        return per_prompt, stats

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.process.is_alive():
                self._conn.send(("stop",))
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
        self._conn.close()


def _child_main(conn, cfg_data: dict, options: dict) -> None:  # pragma: no cover - child
    """The generator process: build the policy, then answer messages (module docstring)."""
    from rmkit.generation.launch import _die_with_parent

    _die_with_parent()
    try:
        state = _ChildState(cfg_data, options)
    except Exception as e:
        conn.send(("failed", None, f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        try:
            reply = state.handle(msg)
        except Exception as e:
            if msg[0] == "gen":
                conn.send(("error", msg[1], f"{type(e).__name__}: {e}"))
                continue
            raise
        if reply is not None:
            conn.send(reply)


class _ChildState:  # pragma: no cover - runs in the child process
    def __init__(self, cfg_data: dict, options: dict):
        import torch

        from rmkit.config.validate import validate_config
        from rmkit.generation.hf import HFBackend
        from rmkit.training.config import TrainConfig
        from rmkit.training.model import build_policy, disable_dropout
        from rmkit.training.rollout import suppress_media_tokens

        torch.set_num_threads(options["threads"])
        cfg = validate_config(TrainConfig, cfg_data, "generator process")
        self.loaded = build_policy(cfg)
        disable_dropout(self.loaded.model)
        self.loaded.model.to(options["device"]).eval()
        self.loaded.model.requires_grad_(False)
        suppress_media_tokens(self.loaded)
        self.backend = HFBackend(
            self.loaded, batch_size=options["batch_size"], decoder=options["decoder"],
            logprobs_mode="processed_logprobs",
        )  # fmt: skip
        self.options = options
        self.params = dict(self.loaded.model.named_parameters())
        self.store: dict[int, dict] = {}
        self.current: int | None = None

    def handle(self, msg):
        import torch
        from safetensors.torch import load_file

        from rmkit.generation.base import SamplingParams
        from rmkit.models.lora import merged_lora
        from rmkit.training.rollout import rollout_dtype

        if msg[0] == "load":
            self.store[msg[1]] = load_file(msg[2])
            return None
        if msg[0] == "drop":
            for v in [v for v in self.store if v < msg[1]]:
                del self.store[v]
            return None
        _, job, convs, params, version = msg
        if self.current != version:
            with torch.no_grad():
                for name, value in self.store[version].items():
                    self.params[name].copy_(value)
            self.current = version
        p = SamplingParams(**{**params, "stop": tuple(params["stop"]), "logprobs": True})
        model = self.loaded.model
        t0 = time.perf_counter()
        dtype = rollout_dtype(self.options["dtype"], model)
        with merged_lora(model, self.options["merge"], dtype):
            rows = self.backend.generate(convs, p)
        seconds = time.perf_counter() - t0
        return ("done", job, [[c.to_dict() for c in row] for row in rows], seconds)
