"""Where RL rollouts are generated: the rollout engine (``rl.rollout.engine``).

- **local** (default): the policy itself, in process, through
  :class:`~rmkit.generation.hf.HFBackend` (LoRA folded into the weights while generating,
  optionally a bf16 copy; see :func:`rmkit.models.lora.merged_lora`).
- **server**: an OpenAI-compatible inference server with vLLM's extensions - vLLM, or
  ``rmkit serve`` - through :class:`~rmkit.generation.token_server.TokenServerBackend`. The
  server is found at ``rl.rollout.server.base_url`` or started for the run from
  ``rl.rollout.server.launch`` (and stopped with it; log in ``<output>/server.log``).

Weight sync for the server engine: before a rollout, when the server's weights are
``rl.rollout.sync_every`` steps old (or were never synced), the trainer writes them to
``<sync_dir>/v<step>`` (written to a temporary name and renamed) and the server takes them:

- LoRA / QLoRA: **adapter only**. The adapter folder (PEFT format) is loaded as
  ``<prefix>-v<step>`` (``/v1/load_lora_adapter``), requests name it, and versions beyond the
  newest ``keep_adapters`` are unloaded and their folders deleted.
- full weights: the model folder (``save_pretrained``) replaces the server's weights in place
  (vLLM's ``/collective_rpc`` ``reload_weights``, then ``/reset_prefix_cache``); the previous
  folder is deleted.

``<step>`` is the policy version: the number of RL steps the weights had taken. Every
completion carries it, and the step's metrics log it (``rollout/policy_version``,
``rollout/staleness``).

Training uses the token ids the server returned. The server's prompt ids must equal the
trainer's rendering of the same conversation; a difference (e.g. another chat template) stops
the run with the first differing position.

Multi-process runs: the main process launches the server and writes and loads the weights;
every process sends its own share of the prompts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rmkit.errors import RmkitError

log = logging.getLogger(__name__)

SYNC_DIR = "rollout-sync"
SERVER_LOG = "server.log"


class LocalEngine:
    """Rollouts from the policy in this process (today's path, unchanged)."""

    name = "local"

    def __init__(self, run):
        from rmkit.generation.hf import HFBackend

        ro = run.cfg.rl.rollout
        self.backend = HFBackend(
            run.loaded,
            batch_size=ro.batch_size or run.cfg.sequences_per_device,
            decoder=ro.decoder,
        )
        run.extras["backend"] = self.backend  # in-training evaluation reuses it

    def prepare(self, run) -> dict[str, float]:
        return {}

    def generate(self, run, convs: list[list[dict]], params) -> tuple[list[list[Any]], dict]:
        from rmkit.models.lora import merged_lora
        from rmkit.training.rollout import rollout_dtype

        cfg = run.cfg
        model = run.unwrapped
        was_training = model.training
        model.eval()
        before = dict(self.backend.stats)
        merge = cfg.rl.rollout.merge_lora and cfg.weights.mode == "lora"
        try:
            with merged_lora(model, merge, rollout_dtype(cfg.rl.rollout.dtype, model)):
                per_prompt = self.backend.generate(convs, params)
        finally:
            model.train(was_training)
        stats = {k: self.backend.stats[k] - before.get(k, 0) for k in ("prefill_s", "decode_s")}
        return per_prompt, stats

    def close(self) -> None:
        pass


class ServerEngine:
    """Rollouts from an inference server, weights synced as adapters or in full (module
    docstring); also runs asynchronous submissions (:mod:`rmkit.training.async_rollouts`)."""

    name = "server"

    def __init__(self, run):
        from concurrent.futures import ThreadPoolExecutor

        from rmkit.generation.token_server import TokenServerBackend

        cfg = run.cfg
        ro = cfg.rl.rollout
        srv = self.srv = ro.server
        self.sync_every = ro.sync_every
        self.keep = ro.keep_adapters  # the config raises it to max_staleness + 1
        self.staleness = ro.max_staleness
        self.check_prompts = ro.check_prompt_ids
        self.names: dict[int, str] = {}  # policy version -> the served name generating it
        self.pending: set = set()  # futures of submitted rollouts
        self._submitter = ThreadPoolExecutor(1, thread_name_prefix="rmkit-rollout")
        self.full = cfg.weights.mode == "full"
        if self.full and _tied_embeddings(run.loaded.model):
            log.warning(
                "full-weight sync with tied input/output embeddings: vLLM 0.32's weight reload "
                "refreshes the input embeddings but not the tied output head (seen on its CPU "
                "build), so rollouts may come from a slightly different policy; watch "
                "rollout/logprob_gap_max (rmkit serve reloads tied weights correctly)"
            )
        self.sync_dir = sync_folder(run)
        digest = hashlib.sha256(str(run.out.resolve()).encode()).hexdigest()[:8]
        self.prefix = f"rmkit-{digest}"
        self.version: int | None = None
        self.process = None
        main = self.is_main = run.accel.is_main_process
        url = srv.base_url
        if srv.launch is not None:
            url = self._launch(run) if main else None
            url = _broadcast(run, url)
        self.backend = TokenServerBackend(
            url, srv.api_model, api_key_env=srv.api_key_env, concurrency=srv.concurrency,
            max_retries=srv.max_retries, timeout=srv.timeout, backoff_base=srv.backoff_base,
        )  # fmt: skip
        try:
            timeout = srv.launch.ready_timeout_s if srv.launch else ro.ready_timeout_s
            models = self.backend.wait_ready(timeout, self.process)
            if self.backend.model is None:
                self.backend.model = self.backend.base_model_name()
            self.base_name = self.backend.model
            log.info("rollout engine: server %s, base model '%s'", url, self.base_name)
            if main:
                self._unload_stale(models)
            run.accel.wait_for_everyone()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ launch

    def _launch(self, run) -> str:
        from rmkit.generation.launch import ServerProcess, address, served_name, server_command

        cfg = run.cfg
        launch = self.srv.launch
        port, url = address(launch)
        argv, env = server_command(
            launch, str(run.loaded.path), served_name(cfg.model.spec), port,
            dtype=cfg.model.dtype, lora_rank=None if self.full else cfg.weights.lora.r,
            sync_root=str(self.sync_dir.resolve()), weight_reload=self.full,
            # asynchronous rollouts need the log-probs of what was sampled
            logprobs_mode="processed_logprobs" if self.staleness else None,
        )  # fmt: skip
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self.process = ServerProcess(
            argv, env, url, run.out / SERVER_LOG, launch.kind, launch.stop_timeout_s
        ).start()
        return url

    # ------------------------------------------------------------------ weight sync

    def prepare(self, run) -> dict[str, float]:
        """Sync the weights when due; returns ``{"sync_s": seconds}`` when it synced."""
        if self.version is not None and run.step - self.version < self.sync_every:
            return {}
        return self.sync(run, run.step)

    def sync(self, run, version: int) -> dict[str, float]:
        """Give the server the current weights as policy ``version`` (every process calls
        this); returns ``{"sync_s": seconds}``."""
        with self._server_errors():
            return self._sync(run, version)

    @contextlib.contextmanager
    def _server_errors(self):
        """A failed request to a launched server that has died reads as its exit."""
        if self.process is not None:
            self.process.check_alive("during the run")
        try:
            yield
        except RmkitError:
            if self.process is not None:
                self.process.check_alive("during the run")
            raise

    def _sync(self, run, version: int) -> dict[str, float]:
        t0 = time.perf_counter()
        folder = self.sync_dir / f"v{version}"
        main = run.accel.is_main_process
        if self.full:
            self.wait_pending()  # the server holds one set of weights: older rollouts first
            save_weights(run, folder)
            if main:
                self.backend.reload_weights(str(folder.resolve()))
                for old in self.sync_dir.glob("v*"):
                    if old != folder:
                        shutil.rmtree(old, ignore_errors=True)
            self.names = {version: self.base_name}
        else:
            save_adapter(run, folder)
            name = f"{self.prefix}-v{version}"
            if version in self.names:  # re-sync at the same step (e.g. after a resume)
                if main:
                    self.backend.load_adapter(name, str(folder.resolve()), inplace=True)
            else:
                self._retire(self.keep - 1, main)  # room for the new one: at most keep loaded
                if main:
                    self.backend.load_adapter(name, str(folder.resolve()))
                self.names[version] = name
        run.accel.wait_for_everyone()
        self.version = version
        self.backend.model, self.backend.policy_version = self.names[version], version
        seconds = time.perf_counter() - t0
        log.debug("synced version %d in %.3fs", version, seconds)
        return {"sync_s": seconds}

    def _retire(self, keep: int, main: bool) -> None:
        """Unload adapters (and delete their folders) beyond the newest ``keep`` (every process
        keeps the same book; the main process talks to the server)."""
        for version in sorted(self.names)[: max(0, len(self.names) - keep)]:
            name = self.names.pop(version)
            if main:
                self._unload(name)
                shutil.rmtree(self.sync_dir / f"v{version}", ignore_errors=True)

    def _unload(self, name: str) -> None:
        try:
            self.backend.unload_adapter(name)
        except RmkitError as e:
            log.warning("could not unload adapter %s: %s", name, e.message)

    def _unload_stale(self, models: list[dict]) -> None:
        """Unload this run's adapters left on a running server by an earlier attempt."""
        for m in models:
            mid = str(m.get("id", "")) if isinstance(m, dict) else ""
            if mid.startswith(self.prefix + "-v"):
                log.info("unloading %s, left on the server by an earlier attempt", mid)
                self._unload(mid)

    # ------------------------------------------------------------------ rollout

    def generate(self, run, convs: list[list[dict]], params) -> tuple[list[list[Any]], dict]:
        """The current version's completions for ``convs`` (synchronous rollouts)."""
        per_prompt, gen_s = self._generate(convs, params, self.version)
        return self.checked(run, convs, per_prompt, gen_s, self.version)

    def submit(self, convs: list[list[dict]], params, version: int):
        """Start generating ``convs`` with policy ``version`` in the background; the future's
        result is ``(per_prompt, server_gen_s)``. Check it with :meth:`checked`."""
        if version not in self.names:
            raise RmkitError(
                f"policy version {version} is not on the server (have {sorted(self.names)})"
            )
        future = self._submitter.submit(self._generate, convs, params, version)
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)
        return future

    def wait_pending(self) -> None:
        """Block until every submitted rollout has finished (their errors surface later)."""
        import concurrent.futures

        concurrent.futures.wait(list(self.pending))

    def _generate(self, convs, params, version):
        before = self.backend.stats["server_gen_s"]
        name = self.names.get(version, self.backend.model) if version is not None else None
        with self._server_errors():
            per_prompt = self.backend.generate(convs, params, model=name, policy_version=version)
        return per_prompt, self.backend.stats["server_gen_s"] - before

    def checked(self, run, convs, per_prompt, gen_s: float, version) -> tuple[list, dict]:
        """Check a rollout's prompt ids and tokens (main thread: the tokenizer is not shared
        with a background thread) and return it with its stats."""
        if self.check_prompts:
            for conv, comps in zip(convs, per_prompt, strict=True):
                check_prompt_ids(run.loaded, conv, comps[0].prompt_token_ids, self.backend.base_url)
        media = set(run.extras.get("media_ids") or ())
        if media:
            for comps in per_prompt:
                for c in comps:
                    bad = sorted(media.intersection(c.token_ids))
                    if bad:
                        raise RmkitError(
                            f"the server generated image/video placeholder token(s) {bad}; a "
                            "completion holding one cannot be scored by a forward pass",
                            hint="use rl.rollout.engine: local (it forbids them) for this policy",
                        )
        stats = {
            "server_gen_s": gen_s,
            "policy_version": float(version if version is not None else -1),
            "staleness": float(run.step - (version or 0)),
        }
        return per_prompt, stats

    def close(self) -> None:
        submitter = getattr(self, "_submitter", None)
        if submitter is not None:
            submitter.shutdown(wait=True, cancel_futures=True)
        backend = getattr(self, "backend", None)
        if backend is not None:
            if self.process is None and not self.full and self.is_main:  # not ours to stop
                for name in self.names.values():
                    self._unload(name)
                self.names = {}
            backend.close()
        if self.process is not None:
            self.process.stop()
            self.process = None


ENGINES = {"local": LocalEngine, "server": ServerEngine}


def make_engine(run):
    """The rollout engine ``run.cfg.rl.rollout.engine`` names. The local engine with
    asynchronous rollouts generates in a process of its own
    (:class:`rmkit.training.generator.GeneratorEngine`)."""
    ro = run.cfg.rl.rollout
    if ro.engine == "local" and ro.max_staleness:
        from rmkit.training.generator import GeneratorEngine

        return GeneratorEngine(run, sync_folder(run))
    return ENGINES[ro.engine](run)


def sync_folder(run) -> Path:
    """Where the trainer writes the weights a rollout engine takes (``rl.rollout.sync_dir``)."""
    ro = run.cfg.rl.rollout
    return Path(ro.sync_dir) if ro.sync_dir else run.out / SYNC_DIR


def check_generation_fits(run) -> None:
    """In-process generation on ZeRO-3-partitioned weights would need every process at every
    decoding step (the processes generate different numbers of tokens and would wait on each
    other forever): refuse it with the settings that work."""
    from rmkit.errors import RmkitError
    from rmkit.training.sharding import mode

    ro = run.cfg.rl.rollout
    if mode(run.accel) == "deepspeed-zero3" and ro.engine == "local" and not ro.max_staleness:
        raise RmkitError(
            "DeepSpeed ZeRO-3 partitions the weights, so the local rollout engine cannot "
            "generate in the training processes",
            hint="use rl.rollout.engine: server (e.g. server: {launch: {kind: vllm}}, as the "
            "full-scale recipes do), rl.rollout.max_staleness: 1, or ZeRO-2",
        )


def save_adapter(run, folder: Path) -> Path:
    """Write the policy's trainable adapter ("default") to ``folder`` in PEFT format,
    atomically (every process calls this: sharded weights are gathered first)."""
    from rmkit.training.engine import sharded

    accel = run.accel
    state = accel.get_state_dict(run.model) if sharded(accel) else None
    if accel.is_main_process:
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        kwargs = {"state_dict": state} if state is not None else {}
        run.unwrapped.save_pretrained(str(tmp), selected_adapters=["default"], **kwargs)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    accel.wait_for_everyone()
    return folder


def save_weights(run, folder: Path) -> Path:
    """Write the policy's full weights to ``folder`` (``save_pretrained``: config and
    safetensors), atomically (every process calls this: sharded weights are gathered first)."""
    accel = run.accel
    state = accel.get_state_dict(run.model)
    if accel.is_main_process:
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        run.unwrapped.save_pretrained(str(tmp), state_dict=state)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    accel.wait_for_everyone()
    return folder


def check_prompt_ids(loaded, conv: list[dict], server_ids: list[int] | None, url: str) -> None:
    """Stop when the server's prompt ids differ from the trainer's rendering of ``conv``."""
    from rmkit.models.chat import prepare_inputs

    mine = prepare_inputs(loaded, [conv])["input_ids"][0].tolist()
    if server_ids == mine:
        return
    theirs = list(server_ids or [])
    pos = next(
        (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
        min(len(mine), len(theirs)),
    )
    tok = loaded.tokenizer

    def around(ids: list[int]) -> str:
        return repr(tok.decode(ids[max(0, pos - 3) : pos + 4]))

    raise RmkitError(
        f"the server at {url} rendered a prompt differently from the trainer: first difference "
        f"at token {pos} (server {len(theirs)} tokens, trainer {len(mine)}): server "
        f"{theirs[pos : pos + 4]} {around(theirs)} vs trainer {mine[pos : pos + 4]} {around(mine)}",
        hint="serve the same model folder (tokenizer and chat template) the trainer loads; "
        "training on re-tokenized text would silently train on other tokens",
    )


def _tied_embeddings(model) -> bool:
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    return bool(
        getattr(text, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False)
    )


def _broadcast(run, value):
    """``value`` of the main process, on every process."""
    if run.accel.num_processes == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
