"""What the three command-line tools share: exit codes, one-line errors, ``--version``, ``-o``.

Every tool runs through :func:`run`, which turns a :class:`~fedge.errors.FedgeError` or a click
usage error into one line on stderr and the documented exit code (0 ok, 1 runtime failure,
2 bad input, 130 interrupted), so no user error ever prints a traceback.

Every listing command prints through :func:`emit` with one ``-o/--output`` option
(:data:`OutputOption`): a table whose cells are never cut (on a terminal long cells fold; into a
pipe or file the table is as wide as its longest row, one row per line), ``wide`` with every
column, or the documents of :mod:`fedge.output` as JSON or YAML.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NoReturn

import click
import typer
import typer.core
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from fedge import __version__
from fedge.errors import FedgeError, PolicyError, UsageError
from fedge.output import OutputFormat, render

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "Column",
    "JsonFlag",
    "OutputFormat",
    "OutputOption",
    "emit",
    "err",
    "new_app",
    "out",
    "output_format",
    "print_table",
    "run",
]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# --- help text -----------------------------------------------------------------------------

# Typer escapes "[required]" / "[default: x]" for rich whenever rich is installed, even with
# rich_markup_mode=None, where nothing unescapes them (fastapi/typer#1058, PR #1089): help
# showed "\\[required]". fedge renders help with click's plain formatter, which undoes just that.
_ESCAPED_EXTRA = re.compile(r"(\\*)\\(\[[a-z#/@][^[]*?])")


def _unescape_extra(help_text: str) -> str:
    """Undo ``rich.markup.escape`` on the trailing ``[...]`` that typer appends to a help line."""
    head, sep, extra = help_text.rpartition("  \\[")
    if not sep and help_text.startswith("\\["):  # an option or argument without help text
        head, sep, extra = "", "\\[", help_text[2:]
    if not sep:
        return help_text
    tail = _ESCAPED_EXTRA.sub(lambda m: m.group(1)[: len(m.group(1)) // 2] + m.group(2), extra)
    return f"{head}{sep[:-2]}[{tail}"


class _HelpFormatter(click.HelpFormatter):
    def write_dl(
        self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2
    ) -> None:
        super().write_dl(
            [(term, _unescape_extra(text)) for term, text in rows], col_max, col_spacing
        )


class _Context(click.Context):
    formatter_class = _HelpFormatter


class _Group(typer.core.TyperGroup):
    """The root group: gives every command below it the unescaping help formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pending: list[click.Command] = [self]
        while pending:
            command = pending.pop()
            command.context_class = _Context
            if isinstance(command, click.Group):
                pending.extend(command.commands.values())


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
        cls=_Group,
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


# --- listings: -o table|wide|json|yaml ---------------------------------------------------

OutputOption = Annotated[
    OutputFormat,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="table, wide (every column), or a document for scripts: json or yaml.",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="The same as -o json.")]


def output_format(output: OutputFormat, as_json: bool = False) -> OutputFormat:
    """The format asked for, with a command's older ``--json`` flag read as ``-o json``."""
    if as_json and output not in (OutputFormat.TABLE, OutputFormat.JSON):
        raise UsageError(f"--json and -o {output.value}: give one of them")
    return OutputFormat.JSON if as_json else output


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its header and how a document item becomes its cell.

    ``wide`` columns show only with ``-o wide``; ``style`` picks a rich style for a cell (shown
    on terminals only), so that item text is never read as markup.
    """

    header: str
    cell: Callable[[Mapping[str, Any]], str]
    wide: bool = False
    justify: Literal["left", "right"] = "left"
    style: Callable[[Mapping[str, Any]], str] | None = None


def print_table(table: Table) -> None:
    """Print ``table`` with no cell cut.

    Every column folds a long cell onto more lines rather than ending it in an ellipsis; and when
    stdout is not a terminal (a pipe, a file, a script) the table gets the width of its longest
    row, so that each row is one line that grep and cut can read whole.
    """
    for column in table.columns:
        column.overflow = "fold"
    if out.is_terminal:
        out.print(table)
        return
    natural = Measurement.get(out, out.options.update_width(1 << 20), table).maximum
    Console(file=out.file, width=max(natural, 20), highlight=False, soft_wrap=False).print(table)


def emit(
    doc: Mapping[str, Any],
    fmt: OutputFormat,
    *,
    columns: Sequence[Column],
    rows: Iterable[Mapping[str, Any]] | None = None,
    title: str | None = None,
    caption: str | None = None,
    notes: Iterable[str] = (),
) -> None:
    """Print a listing: ``doc`` as JSON or YAML, or a table of ``rows`` (``doc["items"]``) with
    ``columns``, followed by the ``notes`` lines (totals, hints) that documents carry as fields."""
    if fmt.is_document:
        out.file.write(render(doc, fmt))
        out.file.flush()
        return
    shown = [c for c in columns if fmt is OutputFormat.WIDE or not c.wide]
    table = Table(title=title, caption=caption)
    for column in shown:
        table.add_column(column.header, justify=column.justify)
    for row in doc["items"] if rows is None else rows:
        table.add_row(*(Text(c.cell(row), style=c.style(row) if c.style else "") for c in shown))
    print_table(table)
    for line in notes:
        out.print(line, markup=False)


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
    if result == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130) on its own
        fail(prog, "interrupted", EXIT_INTERRUPTED)
    raise SystemExit(result if isinstance(result, int) else EXIT_OK)


def main_for(app: typer.Typer, prog: str) -> Callable[[], NoReturn]:
    """The ``console_scripts`` entry point for ``app``."""

    def main() -> NoReturn:
        run(app, prog, sys.argv[1:])

    return main
