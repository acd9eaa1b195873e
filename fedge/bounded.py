"""Reading files and JSON documents with limits, the one way fedge does it.

Everything fedge reads can be pointed at by someone it should not trust completely: a policy path
on a command line, a manifest in a downloaded folder, a ledger on disk, a request body. A plain
``read_bytes()`` trusts the path to be a small regular file; given ``/dev/zero`` it grows without
end, given a FIFO it blocks forever, given a 2 GB file it loads all of it before any size check.
So every file is opened once (non-blocking, so a FIFO cannot hang the open), checked to be a
regular file on the open descriptor (no window between a check and the read), and read with a
cap. JSON that crosses a trust boundary is parsed with a size cap and a nesting cap, and the
parser's own failures (deep nesting, integers of thousands of digits, bad UTF-8) come back as
one :class:`InputError`, never as a traceback.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from fedge.errors import UsageError

__all__ = [
    "DEFAULT_JSON_DEPTH",
    "InputError",
    "check_depth",
    "load_json",
    "read_capped",
    "read_capped_text",
]

DEFAULT_JSON_DEPTH = 64


class InputError(UsageError):
    """A file or document fedge was given is not usable: not a regular file, too big, malformed.

    ``source`` names the file (or the document, for bytes that came over a connection).
    """

    def __init__(self, message: str, *, source: str) -> None:
        self.source = source
        self.reason = message
        super().__init__(f"{source}: {message}")


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    return "is not a regular file"


def read_capped(path: str | os.PathLike[str], *, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, read through one descriptor.

    Symbolic links are followed (an operator may link a policy into place), but whatever they
    lead to must be a regular file: devices, FIFOs, sockets and folders are refused without
    reading a byte.
    """
    source = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise InputError("does not exist", source=source) from exc
    except IsADirectoryError as exc:
        raise InputError("is a folder, not a file", source=source) from exc
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", source=source) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(_describe(info.st_mode), source=source)
        if info.st_size > limit:
            raise InputError(
                f"file is {_size(info.st_size)}, over the {_size(limit)} limit for {what}",
                source=source,
            )
        data = _read_up_to(fd, limit + 1)
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", source=source) from exc
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew between the check and the read
        raise InputError(f"file is over the {_size(limit)} limit for {what}", source=source)
    return data


def _size(count: int) -> str:
    """``4 MiB`` for a power-of-two cap, ``50.0 MB`` for a measured size, bytes when small."""
    if count >= 1 << 20 and count % (1 << 20) == 0:
        return f"{count >> 20} MiB"
    if count >= 1 << 10 and count % (1 << 10) == 0:
        return f"{count >> 10} KiB"
    if count >= 1_000_000:
        return f"{count / 1e6:.1f} MB"
    return f"{count} bytes"


def _read_up_to(fd: int, count: int) -> bytes:
    chunks: list[bytes] = []
    left = count
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_capped_text(
    path: str | os.PathLike[str], *, limit: int, what: str = "file", encoding: str = "utf-8"
) -> str:
    """A regular text file of at most ``limit`` bytes; bad encoding names the byte offset."""
    data = read_capped(path, limit=limit, what=what)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"is not {encoding.upper().removesuffix('-SIG')} text (invalid byte at offset "
            f"{exc.start})",
            source=str(path),
        ) from exc


def check_depth(value: Any, *, limit: int, source: str) -> None:
    """Refuse a parsed document nested deeper than ``limit`` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise InputError(f"is nested more than {limit} levels deep", source=source)
        stack.extend((child, depth + 1) for child in children)


def load_json(
    data: bytes | str,
    *,
    source: str,
    limit: int | None = None,
    max_depth: int = DEFAULT_JSON_DEPTH,
    allow_constants: bool = True,
) -> Any:
    """Parse one JSON document with a size cap and a nesting cap; every failure is an InputError.

    ``allow_constants=False`` refuses ``NaN`` and ``Infinity``, which JSON itself does not have
    and which no fedge document needs where a number is a budget or a size.
    """
    if limit is not None and len(data) > limit:
        raise InputError(f"is {_size(len(data))}, over the {_size(limit)} limit", source=source)
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"is not UTF-8 (invalid byte at offset {exc.start})", source=source
            ) from exc
    else:
        text = data
    try:
        if allow_constants:
            value = json.loads(text)
        else:
            value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise InputError("is nested too deeply to parse", source=source) from exc
    except ValueError as exc:  # JSONDecodeError, and integers over Python's digit limit
        raise InputError(f"is not valid JSON ({exc})", source=source) from exc
    check_depth(value, limit=max_depth, source=source)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
