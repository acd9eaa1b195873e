"""What the three command-line tools share: exit codes, one-line errors, ``--version``.

Every tool runs through :func:`run`, which turns a :class:`~fedge.errors.FedgeError` or a click
usage error into one line on stderr and the documented exit code (0 ok, 1 runtime failure,
2 bad input, 130 interrupted), so no user error ever prints a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

import click
import typer
from rich.console import Console

from fedge import __version__
from fedge.errors import FedgeError, PolicyError

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "err",
    "new_app",
    "out",
    "run",
]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _version_callback(prog: str) -> Callable[[bool], None]:
    def show(value: bool) -> None:
        if value:
            out.print(f"{prog} {__version__}")
            raise typer.Exit

    return show


def new_app(prog: str, help_text: str) -> typer.Typer:
    """A Typer app with ``--version`` and ``-v`` wired the same way in all three tools."""
    app = typer.Typer(
        name=prog,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False,
            "--version",
            callback=_version_callback(prog),
            is_eager=True,
            help="Print the version and exit.",
        ),
        verbose: int = typer.Option(
            0,
            "--verbose",
            "-v",
            count=True,
            show_default=False,
            help="More log output (-v info, -vv debug).",
        ),
    ) -> None:
        from fedge.logs import configure

        configure(verbose)

    return app


def fail(prog: str, message: str, code: int) -> NoReturn:
    err.print(f"{prog}: error: {message}", markup=False)
    raise SystemExit(code)


def run(app: typer.Typer, prog: str, argv: list[str] | None = None) -> NoReturn:
    """Run ``app`` and exit with fedge's exit codes, printing errors as single lines."""
    try:
        result = app(args=argv, prog_name=prog, standalone_mode=False)
    except PolicyError as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False)
        if len(exc.problems) == 1:  # the located line says it all
            raise SystemExit(exc.exit_code) from None
        fail(prog, f"{len(exc.problems)} problems found", exc.exit_code)
    except FedgeError as exc:
        fail(prog, str(exc), exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        # A bare invocation asks for help; it is not a mistake worth a non-zero exit.
        out.print(exc.format_message(), markup=False)
        raise SystemExit(EXIT_OK) from None
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        fail(prog, exc.format_message() + hint, EXIT_USAGE)
    except click.ClickException as exc:
        fail(prog, exc.format_message(), EXIT_USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt):
        fail(prog, "interrupted", EXIT_INTERRUPTED)
    raise SystemExit(result if isinstance(result, int) else EXIT_OK)


def main_for(app: typer.Typer, prog: str) -> Callable[[], NoReturn]:
    """The ``console_scripts`` entry point for ``app``."""

    def main() -> NoReturn:
        run(app, prog, sys.argv[1:])

    return main
