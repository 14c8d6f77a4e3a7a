"""Page ranges of a document (``DocumentRef.pages``): which pages to OCR, e.g. ``"1-3,7"``.

Syntax: comma-separated ranges, each ``N`` or ``N-M`` with 1-based decimal page numbers and
``N <= M`` (inclusive); spaces around numbers and commas are ignored; ranges may come in any
order but must not overlap. The canonical form (:func:`format_page_ranges`) is ascending,
merges adjacent ranges (``"1-2,3"`` -> ``"1-3"``) and has no spaces.

Everything a publisher can write is checked here, cheaply and before any page list is built:
at most :data:`MAX_SPEC_CHARS` characters, at most :data:`MAX_DIGITS` digits a number (no
huge-integer parsing), ranges as ``(first, last)`` pairs until the document's page count is
known, so ``"1-99999999999"`` costs nothing. Every refusal is an :class:`OcrstreamError` with
reason code ``invalid_page_range``.
"""

from __future__ import annotations

import re

from .errors import OcrstreamError, ReasonCode

MAX_SPEC_CHARS = 1000
"""Longest page-range string accepted (characters)."""

MAX_DIGITS = 9
"""Most digits of one page number (a document has far fewer pages; bounds the parse)."""

_RANGE = re.compile(r"\s*(\d{1,%d})\s*(?:-\s*(\d{1,%d})\s*)?" % (MAX_DIGITS, MAX_DIGITS), re.ASCII)  # no "１-３"


def _refuse(message: str) -> OcrstreamError:
    return OcrstreamError(ReasonCode.INVALID_PAGE_RANGE, message)


def parse_page_ranges(spec: object) -> list[tuple[int, int]]:
    """The ranges of ``spec`` as ascending, non-overlapping, merged ``(first, last)`` pairs
    (1-based, inclusive), without looking at any document.

    Raises:
        OcrstreamError: ``invalid_page_range``: not a string, empty, longer than
            :data:`MAX_SPEC_CHARS`, a token that is not ``N`` / ``N-M``, a page 0, a reversed
            range (``3-1``), or overlapping ranges (``1-3,2``).
    """
    if not isinstance(spec, str):
        raise _refuse(f"pages must be a string like \"1-3,7\", not {type(spec).__name__}")
    if len(spec) > MAX_SPEC_CHARS:
        raise _refuse(f"pages is {len(spec)} characters long, limit {MAX_SPEC_CHARS}")
    if not spec.strip():
        raise _refuse("pages is empty: leave it out to OCR every page")
    ranges = []
    for token in spec.split(","):
        m = _RANGE.fullmatch(token)
        if m is None and re.fullmatch(r"\s*\d+\s*(?:-\s*\d+\s*)?", token):
            raise _refuse(f"{token.strip()[:40]!r}: a page number of more than {MAX_DIGITS} digits is beyond "
                          "any document")
        if m is None:
            shown = token.strip()[:40]
            raise _refuse(f"{shown!r} is not a page or a range of pages (N or N-M, 1-based, at most "
                          f"{MAX_DIGITS} digits)")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if first < 1:
            raise _refuse(f"page {first} in {token.strip()!r}: pages are numbered from 1")
        if last < first:
            raise _refuse(f"range {token.strip()!r} is reversed: write {last}-{first}")
        ranges.append((first, last))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for first, last in ranges:
        if merged and first <= merged[-1][1]:
            raise _refuse(f"ranges {merged[-1][0]}-{merged[-1][1]} and {first}-{last} overlap")
        if merged and first == merged[-1][1] + 1:  # adjacent: one range
            merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def format_page_ranges(ranges: list[tuple[int, int]]) -> str:
    """The canonical text of ranges from :func:`parse_page_ranges`: ``[(1, 3), (7, 7)]`` -> ``"1-3,7"``."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def normalize_page_ranges(spec: object) -> str:
    """``spec`` in canonical form (``" 7, 1-2,3"`` -> ``"1-3,7"``).

    Raises:
        OcrstreamError: ``invalid_page_range``, as :func:`parse_page_ranges`.
    """
    return format_page_ranges(parse_page_ranges(spec))


def select_pages(spec: object, page_count: int) -> list[int]:
    """The page numbers ``spec`` selects from a document of ``page_count`` pages, ascending.

    Raises:
        OcrstreamError: ``invalid_page_range``, as :func:`parse_page_ranges`, or a page beyond
            ``page_count`` (the message names the document's page count).
    """
    ranges = parse_page_ranges(spec)
    if ranges[-1][1] > page_count:
        raise _refuse(f"page {ranges[-1][1]} requested, the document has {page_count} page"
                      f"{'s' if page_count != 1 else ''}")
    return [n for first, last in ranges for n in range(first, last + 1)]
