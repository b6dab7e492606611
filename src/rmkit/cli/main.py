"""The ``rmkit`` command: one typer app and one error funnel.

Command modules import only light things at module level (typer, the config schemas); torch,
transformers and datasets are imported inside the functions that need them, so ``rmkit --help``
stays instant. Every :class:`~rmkit.errors.RmkitError` is printed as one line plus a hint and
exits with code 1; ``RMKIT_DEBUG=1`` prints the full traceback instead. Usage errors (unknown
option, missing argument) exit with code 2. Logs and progress go to stderr, results to stdout.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from rmkit import __version__


def omp_wait_policy(load: float, cpus: int) -> str | None:
    """The OpenMP wait policy to run with, given the 1-minute load average when rmkit starts.

    OpenMP threads busy-wait between parallel regions by default. On a quiet machine that is
    what makes small ops fast: a 2-thread bf16 decode step of SmolLM2-135M took 58 ms with the
    default and 109 ms with ``PASSIVE`` (threads sleep and are woken for every op). When other
    processes already keep the cores busy, spinning threads fight them for the CPU: the same
    step took 193 ms with the default and 120 ms with ``PASSIVE`` beside two CPU-bound
    processes (on an older host under load 3-4, 0.5-2.4 s against 0.12-0.16 s). So: ``PASSIVE``
    when the machine is already busy (load average at least ``cpus - 0.5``), else OpenMP's
    default (None).
    """
    return "PASSIVE" if load >= max(cpus - 0.5, 0.5) else None


def _set_omp_wait_policy() -> None:
    """Apply :func:`omp_wait_policy` before torch loads OpenMP; a value the user set wins."""
    if "OMP_WAIT_POLICY" in os.environ or not hasattr(os, "getloadavg"):
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    policy = omp_wait_policy(os.getloadavg()[0], cpus or 1)
    if policy:
        os.environ["OMP_WAIT_POLICY"] = policy


_set_omp_wait_policy()

app = typer.Typer(
    name="rmkit",
    help="Build data for, train, and evaluate generative (multimodal) reward models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr."),
) -> None:
    """rmkit: one tool from raw preference data to a scored, reported reward model."""
    setup_logging(logging.DEBUG if verbose else logging.INFO)


def setup_logging(level: int = logging.INFO) -> None:
    from rmkit.utils.console import stderr_handler

    root = logging.getLogger("rmkit")
    root.setLevel(level)
    if not root.handlers:
        root.addHandler(stderr_handler())
    root.propagate = False


def _register() -> None:
    from rmkit.cli import build_data, recipes

    build_data.register(app)
    recipes.register(app)
    for name in ("train", "eval", "distill", "serve", "run"):
        try:
            mod = __import__(f"rmkit.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as e:  # a command module not present in this build
            if e.name != f"rmkit.cli.{name}":
                raise
            continue
        mod.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point with the error funnel. Returns the exit code."""
    from rmkit.errors import RmkitError

    debug = os.environ.get("RMKIT_DEBUG", "") not in ("", "0", "false")
    try:
        # Non-standalone typer returns the code of a typer.Exit (130 for Ctrl-C) instead of exiting.
        rv = app(args=argv, prog_name="rmkit", standalone_mode=False)
        code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        if code == 130:
            _print_error("interrupted", "rerun the same command to resume where supported")
        return code
    except RmkitError as e:
        if debug:
            raise
        _print_error(e.message, e.hint)
        return 1
    except KeyboardInterrupt:
        _print_error("interrupted", "rerun the same command to resume where supported")
        return 130
    except SystemExit as e:  # typer.Exit inside commands
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except Exception as e:  # click usage errors and anything unexpected
        click = _click_exceptions()
        if type(e).__name__ == "Abort":
            _print_error("aborted", None)
            return 130
        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        if debug:
            raise
        _print_error(
            f"unexpected error: {type(e).__name__}: {e}",
            "rerun with RMKIT_DEBUG=1 for the traceback",
        )
        return 1


def _click_exceptions():
    """The click exception classes typer uses (typer >= 0.20 vendors click as typer._click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer: plain click
        from click import exceptions
    return exceptions


def _print_error(message: str, hint: str | None) -> None:
    from rmkit.utils.console import err_console

    con = err_console()
    con.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    if hint:
        con.print(f"[yellow]hint:[/] {hint}", highlight=False, soft_wrap=True)


def run() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
