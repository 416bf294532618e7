"""Rows of records for people and for pipes: a table that fits the terminal, or, when stdout is
not a terminal, tab-separated lines with full values and a header of the JSON key names.

On a terminal long ids are shortened (the full ones are in `--json` and in piped output), text is
wrapped at word boundaries and cut only with an ellipsis; piped, nothing is cut or wrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from training_tasks.protocol.ids import VERSION_PATTERN

Row = Mapping[str, Any]
Justify = Literal["left", "right"]
ELLIPSIS = "…"
RUN_ID_CHARS = 8  # a run id is 32 random hex digits; 8 tell apart any runs one table shows


@dataclass(frozen=True)
class Column:
    """One column: its header on a terminal, its key in piped output, and its cell text."""

    header: str
    key: str
    cell: Callable[[Row], str]  # what a terminal shows (may shorten)
    full: Callable[[Row], str] | None = None  # what a pipe gets (default: `cell`)
    no_wrap: bool = False
    justify: Justify = "left"
    max_width: int | None = None


def is_plain(out: Console) -> bool:
    """True when `out` is not a terminal (a pipe or a file): print plain lines, nothing cut."""
    return not out.is_terminal


def show(
    out: Console, title: str, columns: Sequence[Column], rows: Iterable[Row], *, tsv: bool = True
) -> None:
    """Print `rows` as a table on a terminal, or as tab-separated full values when piped."""
    rows = list(rows)
    if is_plain(out):
        if tsv:
            print_tsv(out, [c.key for c in columns], [[_full(c, r) for c in columns] for r in rows])
        return
    out.print(table(title, columns, rows))


def table(title: str, columns: Sequence[Column], rows: Iterable[Row]) -> Table:
    """A rich table that shrinks to the console: wrapping at spaces, an ellipsis where it cuts."""
    grid = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        title_justify="left",
    )
    for column in columns:
        grid.add_column(
            column.header,
            no_wrap=column.no_wrap,
            overflow="ellipsis",
            justify=column.justify,
            max_width=column.max_width,
        )
    for row in rows:
        grid.add_row(*(Text(column.cell(row)) for column in columns))
    return grid


def print_tsv(out: Console, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Tab-separated lines, the first naming the fields; tabs and line breaks become spaces."""
    for values in (header, *rows):
        # Written as they are: rich would expand the tabs into spaces.
        out.file.write("\t".join(_one_line(value) for value in values) + "\n")
    out.file.flush()


def print_fields(out: Console, fields: Iterable[tuple[str, Any]], indent: str = "") -> None:
    """`key: value` lines, one per field; never wrapped when piped."""
    for key, value in fields:
        text = Text(f"{indent}{key}: {'-' if value is None else value}")
        out.print(text, soft_wrap=is_plain(out))


def short_version(version: str | None) -> str:
    """`v2026-01-15T10-30-00…a1b2c3d4`: a version id to the second plus its random suffix."""
    if not version:
        return "-"
    if not VERSION_PATTERN.match(version):
        return version
    return f"{version[:20]}{ELLIPSIS}{version[-8:]}"


def short_run_id(run_id: str | None) -> str:
    """The first hex digits of a run id, like a short git hash."""
    return "-" if not run_id else run_id[:RUN_ID_CHARS]


def clip(text: str | None, limit: int) -> str:
    """`text` on one line, cut at a word boundary before `limit` characters with an ellipsis."""
    flat = _one_line(text or "")
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + ELLIPSIS


def minute(iso_time: str | None) -> str:
    """`2026-01-15 10:30` of an ISO 8601 time (in its own offset); '-' for none."""
    if not iso_time:
        return "-"
    try:
        at = datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    except ValueError:
        return iso_time
    return at.strftime("%Y-%m-%d %H:%M")


def duration(start: str | None, end: str | None) -> str:
    """How long from `start` to `end` (ISO 8601), compact: `4.2s`, `42s`, `3m05s`, `2h03m`."""
    if not start or not end:
        return "-"
    took_s = (
        datetime.fromisoformat(end.replace("Z", "+00:00"))
        - datetime.fromisoformat(start.replace("Z", "+00:00"))
    ).total_seconds()
    if took_s < 60:
        return f"{took_s:.1f}s" if took_s < 10 else f"{took_s:.0f}s"
    if took_s < 3600:
        return f"{int(took_s // 60)}m{int(took_s % 60):02d}s"
    return f"{int(took_s // 3600)}h{int(took_s % 3600 // 60):02d}m"


def size(size_bytes: int | None) -> str:
    """`219 KiB`, `3.4 MiB` or `512 B`; '-' when unknown."""
    if size_bytes is None:
        return "-"
    if size_bytes < 1024:
        return f"{size_bytes} B"
    if size_bytes < 1024 * 1024:
        return f"{size_bytes / 1024:.0f} KiB"
    return f"{size_bytes / (1024 * 1024):.1f} MiB"


def number(value: Any, digits: int = 3) -> str:
    """A metric for people: fixed decimals; '-' when not recorded."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _full(column: Column, row: Row) -> str:
    return (column.full or column.cell)(row)


def _one_line(value: object) -> str:
    return " ".join(str(value).split()) if value is not None else ""
