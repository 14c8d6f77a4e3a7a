"""Text accuracy metrics for OCR output: bag-of-words P/R/F1 and character error rate.

Sources of the metrics:

* Word precision / recall / F1 are computed over the *multiset* of upper-cased,
  whitespace-separated words, ignoring order. This is the bag-of-words scoring
  used for the SROIE receipts (ICDAR 2019 SROIE task 2 scores OCR output the
  same way, by matching words regardless of position); the team has used it
  for the receipts so far.
* CER is the usual character error rate: Levenshtein edit distance
  (insertions + deletions + substitutions, each cost 1) divided by the length
  of the reference, computed after whitespace normalisation. Edit distance
  comes from ``rapidfuzz`` (``rapidfuzz.distance.Levenshtein``).

All functions are pure; none touches the filesystem except
:func:`load_sroie_truth`.
"""

from __future__ import annotations

import re
from pathlib import Path

from rapidfuzz.distance import Levenshtein

# The bag-of-words metric is also the runtime's (`ocrstream compare`: agreement between model
# profiles), so it lives in ocrstream.textmatch; it is re-exported here under its old names.
from ocrstream.textmatch import WordCounts, micro_prf, prf, word_counts, word_prf, words

__all__ = [
    "WordCounts",
    "cer",
    "char_tokens",
    "colon_tokens",
    "punct_tokens",
    "load_sroie_truth",
    "micro_prf",
    "normalize_whitespace",
    "prf",
    "word_counts",
    "word_prf",
    "words",
]

_WS = re.compile(r"\s+")


def normalize_whitespace(text: str) -> str:
    """Collapse each whitespace run (spaces, tabs, newlines, form feeds) to one space and strip."""
    return _WS.sub(" ", text).strip()


_COLON = re.compile(r"\s*:\s*")


def colon_tokens(text: str) -> list[str]:
    """Like :func:`words`, but every ``:`` is a token of its own (``TEL:03`` -> ``TEL : 03``).

    Diagnostic only: it shows how much of a word-F1 gap is the spacing around colons,
    which SROIE's transcriptions write as ``TEL : 03-3271`` whatever the print shows.
    """
    return words(_COLON.sub(" : ", text))


_PUNCT = re.compile(r"[^\W_]+|\S")


def punct_tokens(text: str) -> list[str]:
    """Upper-cased tokens: each run of letters and digits, and every other non-space character
    alone (``TEL:03-3271`` -> ``TEL : 03 - 3271``). The punctuation-split word F1 of issue 15:
    spacing around punctuation no longer counts, spacing between words still does."""
    return _PUNCT.findall(text.upper())


def char_tokens(text: str) -> list[str]:
    """The upper-cased non-whitespace characters of ``text``: a bag of characters, blind to
    spacing (diagnostic: what word F1 would be if every space were right)."""
    return [c for c in text.upper() if not c.isspace()]


def cer(predicted: str, truth: str) -> float:
    """Character error rate of ``predicted`` against ``truth``.

    Both texts are normalised with :func:`normalize_whitespace` (so line breaks
    and page breaks count as one space each); case is kept. The result is the
    Levenshtein distance divided by the normalised truth length. It is 0.0 iff
    the normalised strings are equal and can exceed 1.0 when the prediction is
    much longer than the truth.

    Returns:
        the CER as a fraction (not a percentage); for an empty normalised truth,
        0.0 if the prediction is empty too, else 1.0.
    """
    p, t = normalize_whitespace(predicted), normalize_whitespace(truth)
    if not t:
        return 0.0 if not p else 1.0
    return Levenshtein.distance(p, t) / len(t)


def load_sroie_truth(csv_path: str | Path) -> str:
    """Ground-truth text of one SROIE receipt annotation file.

    Each line of the file is ``x1,y1,x2,y2,x3,y3,x4,y4,TEXT``; TEXT may itself
    contain commas, so each line is split on its first 8 commas only. Files are
    decoded as UTF-8, falling back to Latin-1 (a few SROIE files hold Latin-1
    bytes). Blank lines are skipped.

    Args:
        csv_path: path of ``NNN.csv``.

    Returns:
        the TEXT fields joined with newlines, in file order.

    Raises:
        OSError: the file cannot be read.
        ValueError: a non-blank line has fewer than 9 fields.
    """
    raw = Path(csv_path).read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:
        content = raw.decode("latin-1")
    lines = []
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(",", 8)
        if len(parts) < 9:
            raise ValueError(f"{csv_path}:{n}: expected 8 coordinates and a text, got {line!r}")
        lines.append(parts[8])
    return "\n".join(lines)
