"""Start an inference server for a run, and stop it whatever happens.

A ``launch`` block (:class:`LaunchConfig`) names the server kind - ``vllm`` (vLLM's
OpenAI-compatible server, in its own Python environment) or ``rmkit`` (``rmkit serve``) - and
how to run it. :class:`ServerProcess` starts it in its own process group with its output
streamed to a log file, waits until ``GET /v1/models`` answers (or the process exits, or the
readiness timeout passes: both are one-line errors with the end of the log), and stops it at
the end of the run, on an error, on Ctrl-C and on SIGTERM (SIGTERM to the group, SIGKILL after
a grace period). If the run itself is killed (SIGKILL), the kernel sends the server SIGTERM
(``PR_SET_PDEATHSIG``), so no server outlives its run.

Which Python runs vLLM: ``launch.python``, else ``$RMKIT_VLLM_PYTHON``, else the environment
``make vllm`` builds (``<project>/.vllm-venv``), else ``$RMKIT_HOME/vllm-venv``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Literal

from pydantic import Field

from rmkit.config.validate import StrictModel
from rmkit.errors import RmkitError

log = logging.getLogger(__name__)

SERVER_KINDS = ("vllm", "rmkit")
# LoRA ranks vLLM accepts for --max-lora-rank
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LaunchConfig(StrictModel):
    """How rmkit starts a server for a run (see the module docstring)."""

    kind: Literal["vllm", "rmkit"] = Field("vllm", description="vllm or rmkit (rmkit serve)")
    python: str | None = Field(None, description="interpreter that runs the server")
    host: str = Field("127.0.0.1", description="address the server binds")
    port: int = Field(0, ge=0, le=65535, description="0: a free port")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="default: the policy's dtype"
    )
    ready_timeout_s: float = Field(900.0, gt=0, description="seconds to wait for /v1/models")
    stop_timeout_s: float = Field(20.0, gt=0, description="grace period after SIGTERM")
    max_loras: int = Field(2, ge=1, description="adapters resident at once")
    max_lora_rank: int | None = Field(None, gt=0, description="default: the policy's LoRA rank")
    max_model_len: int | None = Field(None, gt=0, description="vllm: context length to reserve")
    args: list[str] = Field(default_factory=list, description="extra server arguments")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")


def vllm_python(configured: str | None = None) -> str:
    """The interpreter with vLLM installed (see the module docstring)."""
    for where, given in (
        ("launch.python", configured),
        ("$RMKIT_VLLM_PYTHON", os.environ.get("RMKIT_VLLM_PYTHON")),
    ):
        if given:
            if not Path(given).is_file():
                raise RmkitError(
                    f"{where} is {given}, which does not exist",
                    hint="point it at the python of an environment with vLLM (`make vllm` builds one)",
                )
            return given
    candidates = [Path(__file__).resolve().parents[3] / ".vllm-venv" / "bin" / "python"]
    home = os.environ.get("RMKIT_HOME")
    candidates.append(
        (Path(home) if home else Path.home() / ".cache" / "rmkit") / "vllm-venv" / "bin" / "python"
    )
    for c in candidates:
        if c.is_file():
            return str(c)
    raise RmkitError(
        "no Python environment with vLLM found (looked at $RMKIT_VLLM_PYTHON, "
        + ", ".join(str(c) for c in candidates)
        + ")",
        hint="run `make vllm`, or set launch.python (or $RMKIT_VLLM_PYTHON) to vLLM's python",
    )


def served_name(spec: str) -> str:
    """The name a launched server lists a model under: a folder's name, or the spec itself
    (a built-in name; a hub id with ``/`` spelled ``--``)."""
    spec = str(spec)
    name = Path(spec).name if os.sep in spec and Path(spec).expanduser().exists() else spec
    return name.replace("/", "--") or "policy"


def address(launch: LaunchConfig) -> tuple[int, str]:
    """``(port, base URL)`` a launched server will answer at (a free port for port 0)."""
    port = launch.port or free_port(launch.host)
    host = "127.0.0.1" if launch.host in ("0.0.0.0", "::") else launch.host
    return port, f"http://{host}:{port}/v1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(
    cfg: LaunchConfig,
    model_dir: str,
    served_name: str,
    port: int,
    *,
    dtype: str,
    lora_rank: int | None,
    sync_root: str | None,
    weight_reload: bool = False,
    adapter: str | None = None,
    logprobs_mode: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) that start ``cfg.kind`` serving ``model_dir`` on ``port``.

    ``lora_rank``: enable runtime LoRA loading for adapters up to that rank.
    ``weight_reload``: enable replacing the weights from a folder (full-weight sync; for vLLM
    this turns on its development endpoints, ``VLLM_SERVER_DEV_MODE=1``). ``sync_root``:
    the folder adapters and weights are read from (rmkit serve refuses any other).
    ``adapter``: a PEFT adapter folder served on top of the model from the start (rmkit serve
    applies it to ``served_name``; vLLM serves it as the LoRA module ``served_name``, so the
    base model gets ``<served_name>-base``). ``logprobs_mode``: what ``logprobs`` report
    (``raw_logprobs`` or ``processed_logprobs``, the same flag for both kinds; default the
    server's own, raw).
    """
    dtype = cfg.dtype or dtype
    if cfg.kind == "vllm":
        base_name = f"{served_name}-base" if adapter else served_name
        argv = [
            vllm_python(cfg.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", model_dir, "--served-model-name", base_name,
            "--host", cfg.host, "--port", str(port), "--dtype", dtype,
        ]  # fmt: skip
        if adapter:
            lora_rank = max(lora_rank or 0, _adapter_rank(adapter))
            argv += ["--lora-modules", f"{served_name}={adapter}"]
        env = {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_NO_USAGE_STATS": "1",
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        }
        rank = cfg.max_lora_rank or lora_rank
        if rank is not None:
            allowed = [r for r in VLLM_LORA_RANKS if r >= rank]
            if not allowed:
                raise RmkitError(
                    f"LoRA rank {rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})"
                )
            argv += ["--enable-lora", "--max-lora-rank", str(allowed[0])]
            argv += ["--max-loras", str(cfg.max_loras)]
        if weight_reload:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        if cfg.max_model_len:
            argv += ["--max-model-len", str(cfg.max_model_len)]
    else:
        argv = [
            cfg.python or sys.executable, "-m", "rmkit", "serve", model_dir,
            "--served-model-name", served_name, "--host", cfg.host, "--port", str(port),
            "--dtype", dtype, "--max-loras", str(cfg.max_loras),
        ]  # fmt: skip
        env = {"RMKIT_NO_PROGRESS": "1"}
        if adapter:
            argv += ["--adapter", adapter]
        if lora_rank is not None:
            argv += ["--enable-lora"] + (["--lora-root", sync_root] if sync_root else [])
        if weight_reload:
            argv += ["--enable-weight-reload"] + (
                ["--weights-root", sync_root] if sync_root else []
            )
    if logprobs_mode:
        argv += ["--logprobs-mode", logprobs_mode]
    env.update(cfg.env)
    return argv + list(cfg.args), env


def _adapter_rank(folder: str) -> int:
    import json

    try:
        return int(json.loads((Path(folder) / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError):
        raise RmkitError(
            f"{folder}: not a PEFT LoRA adapter folder (adapter_config.json)"
        ) from None


def launch_backend(cfg, server_log: str | Path | None = None, **extra):
    """Start the server ``cfg.launch`` describes for ``cfg.model`` (and ``cfg.adapter``), wait
    until it answers, and return an OpenAI-compatible backend for it whose ``close()`` also
    stops the server. ``cfg`` is a :class:`rmkit.generation.config.BackendConfig`."""
    import tempfile

    from rmkit.generation.openai_api import OpenAIBackend
    from rmkit.generation.token_server import TokenServerBackend
    from rmkit.models.registry import resolve_model

    launch = cfg.launch
    folder = str(resolve_model(cfg.model))
    name = served_name(cfg.model)
    port, url = address(launch)
    adapter = str(Path(cfg.adapter).expanduser().resolve()) if cfg.adapter else None
    argv, env = server_command(
        launch, folder, name, port, dtype=cfg.dtype, lora_rank=None, sync_root=None,
        adapter=adapter,
    )  # fmt: skip
    if server_log is None:
        fd, server_log = tempfile.mkstemp(prefix="rmkit-server-", suffix=".log")
        os.close(fd)
    process = ServerProcess(
        argv, env, url, Path(server_log), launch.kind, launch.stop_timeout_s
    ).start()
    try:
        probe = TokenServerBackend(url, name, api_key_env=cfg.api_key_env)
        try:
            probe.wait_ready(launch.ready_timeout_s, process)
        finally:
            probe.close()
        backend = OpenAIBackend(
            url, name, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
            max_retries=cfg.max_retries, timeout=cfg.timeout, backoff_base=cfg.backoff_base,
            max_tokens_field=cfg.max_tokens_field,
            explicit_sampling=cfg.sends_explicit_sampling, **extra,
        )  # fmt: skip
    except BaseException:
        process.stop()
        raise
    close = backend.close

    def close_and_stop() -> None:
        try:
            close()
        finally:
            process.stop()

    backend.close = close_and_stop  # type: ignore[method-assign]
    backend.server = process  # type: ignore[attr-defined]
    return backend


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this process when the process that started it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_RUNNING: set[ServerProcess] = set()
_RUNNING_LOCK = threading.Lock()


def _stop_all() -> None:
    for proc in list(_RUNNING):
        proc.stop()


atexit.register(_stop_all)


class ServerProcess:
    """A server process started for a run (see the module docstring)."""

    def __init__(
        self, argv: list[str], env: dict[str, str], url: str, log_path: Path, name: str,
        stop_timeout_s: float = 20.0,
    ):  # fmt: skip
        self.argv, self.env, self.url, self.log_path, self.name = argv, env, url, log_path, name
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logfile = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - the child owns it
        logfile.write(f"=== rmkit: starting {' '.join(self.argv)}\n".encode())
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # its own process group: stopped as a whole
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as e:
            raise RmkitError(
                f"cannot start the {self.name} server ({self.argv[0]}: {e.strerror or e})",
                hint="check launch.python",
            ) from None
        finally:
            logfile.close()
        self._note(f"server pid {self.proc.pid}, url {self.url}")
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        log.info("started %s server (pid %d) for %s; log: %s", self.name, self.proc.pid,
                 self.url, self.log_path)  # fmt: skip
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self, when: str) -> None:
        """Raise a one-line error (with the end of the log) if the server has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RmkitError(
                f"the {self.name} server exited with code {self.proc.returncode} {when}; "
                f"its log ends: {self.log_tail()}",
                hint=f"read the whole log: {self.log_path}",
            )

    def log_tail(self, lines: int = 3, chars: int = 600) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return " | ".join(tail)[-chars:] or "(empty)"

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after ``stop_timeout_s`` (idempotent)."""
        proc = self.proc
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the %s server did not stop within %gs; killing it", self.name,
                        self.stop_timeout_s)  # fmt: skip
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # also any children left in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self._note(f"server stopped (pid {proc.pid}, exit code {proc.returncode})")
        log.info("stopped %s server (pid %d)", self.name, proc.pid)

    def _note(self, text: str) -> None:
        """Append a line of rmkit's own to the server log."""
        with contextlib.suppress(OSError), open(self.log_path, "a") as fh:
            fh.write(f"=== rmkit: {text}\n")


@contextlib.contextmanager
def terminate_on_sigterm():
    """Turn SIGTERM into KeyboardInterrupt for the duration (main thread only), so cleanup
    code in ``finally`` blocks runs when a job manager stops the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
