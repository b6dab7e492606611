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
    # Nothing here samples the machine or logs: threading is decided where a model is loaded
    # (rmkit.models.loading.configure_threads).
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
