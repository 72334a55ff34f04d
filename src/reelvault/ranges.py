"""Byte ranges: the one parser of ``START-END``, ``START-`` and ``-N``, shared by the CLI's
``--range`` and the HTTP origin's ``Range`` header, and their resolution against a size.

Pure functions with their own exceptions (mapped to a status only at the edges):
:class:`RangeSyntaxError` for text that is no range, :class:`RangeNotSatisfiable` for a
range that selects nothing of the representation (HTTP 416 with ``bytes */N``).

HTTP (RFC 9110, section 14) differs from the CLI in two ways :func:`parse_range_header`
handles: a ``Range`` header the server does not understand is ignored (the whole body is
sent), and an end past the last byte is clamped rather than refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_RANGE_HEADER",
    "ByteRange",
    "RangeNotSatisfiable",
    "RangeSyntaxError",
    "parse_range",
    "parse_range_header",
    "resolve",
]

_INT64_MAX: Final = (1 << 63) - 1
MAX_RANGE_HEADER: Final = 1024
"""Characters of a ``Range`` header the origin parses; a longer one is ignored."""

_RANGE: Final = re.compile(r"([0-9]*)-([0-9]*)")


class RangeSyntaxError(ValueError):
    """Text that is not ``START-END``, ``START-`` or ``-N``."""


class RangeNotSatisfiable(ValueError):
    """A well-formed range that selects no byte of the representation."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A parsed range: ``offset`` with ``length`` (``START-END``), ``offset`` alone
    (``START-``), or ``suffix`` (``-N``); all None is the whole representation."""

    offset: int | None = None
    length: int | None = None
    suffix: int | None = None

    @property
    def whole(self) -> bool:
        return self.offset is None and self.suffix is None


def parse_range(text: str) -> ByteRange:
    """Parse ``START-END`` (inclusive), ``START-`` or ``-N``.

    Raises:
        RangeSyntaxError: anything else, an end before the start, or ``-0``.
    """
    match = _RANGE.fullmatch(text.strip(" \t"))
    if match is None or match.group(1) == match.group(2) == "":
        raise RangeSyntaxError(f"{text!r} is not START-END, START- or -N")
    # a run of digits longer than 19 is beyond int64: refuse before converting it
    if any(len(g) > 19 for g in match.groups()):
        raise RangeSyntaxError(f"{text!r}: a number is too large")
    start, end = (int(g) if g else None for g in match.groups())
    if any(n is not None and n > _INT64_MAX for n in (start, end)):
        raise RangeSyntaxError(f"{text!r}: a number is too large")
    if start is None:
        if end == 0:
            raise RangeSyntaxError("-N needs N > 0")
        return ByteRange(suffix=end)
    if end is None:
        return ByteRange(offset=start)
    if end < start:
        raise RangeSyntaxError(f"{text!r}: the end is before the start")
    return ByteRange(offset=start, length=end - start + 1)


def parse_range_header(value: str | None) -> ByteRange:
    """The range an HTTP ``Range`` header asks for, as the origin serves it.

    One ``bytes=`` range is honoured; several ranges (``bytes=0-1,5-9``), another unit, a
    header longer than :data:`MAX_RANGE_HEADER` or one that does not parse are answered
    with the whole representation (RFC 9110 lets a server ignore Range; a multipart answer
    is something no player needs), so they yield the whole :class:`ByteRange`.
    A ``-0`` suffix is well-formed HTTP but selects nothing, so it is not satisfiable.

    Raises:
        RangeNotSatisfiable: ``bytes=-0``.
    """
    if value is None or len(value) > MAX_RANGE_HEADER:
        return ByteRange()
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip(" \t").lower() != "bytes" or "," in spec:
        return ByteRange()
    if spec.strip(" \t") == "-0":
        raise RangeNotSatisfiable("a suffix of zero bytes")
    try:
        return parse_range(spec)
    except RangeSyntaxError:
        return ByteRange()


def resolve(selected: ByteRange, size: int, *, clamp: bool = True) -> tuple[int, int]:
    """``(start, count)`` of ``selected`` within a representation of ``size`` bytes.

    Args:
        clamp: HTTP's rule: an end past the last byte means the last byte. Without it
            such a range is not satisfiable (the gRPC API's rule).

    Raises:
        RangeNotSatisfiable: a start at or past the end, any range of an empty
            representation, or (without ``clamp``) an end past it.
    """
    if selected.whole:
        return 0, size
    if selected.suffix is not None:
        if size == 0:
            raise RangeNotSatisfiable("the representation is empty")
        count = min(selected.suffix, size)
        return size - count, count
    start = selected.offset or 0
    if start >= size:
        raise RangeNotSatisfiable("the range starts past the end")
    available = size - start
    if selected.length is None:
        return start, available
    if selected.length > available and not clamp:
        raise RangeNotSatisfiable("the range ends past the end")
    return start, min(selected.length, available)
