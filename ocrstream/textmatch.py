"""Bag-of-words agreement of two texts: word precision, recall and F1.

Words are upper-cased and whitespace-separated, compared as *multisets* regardless of order:
the scoring ICDAR 2019 SROIE task 2 uses for OCR output, and the one this project's accuracy
figures use (``devtools/textmetrics.py`` re-exports these functions for the benchmarks). The
runtime uses it for ``ocrstream compare`` (agreement between model profiles), so it is here, with
no dependency beyond the standard library.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

__all__ = ["WordCounts", "micro_prf", "prf", "word_counts", "word_prf", "words"]


def words(text: str) -> list[str]:
    """Upper-cased words of ``text``, split on any run of whitespace.

    Args:
        text: any string (newlines and form feeds count as whitespace).

    Returns:
        the words in order, upper-cased; ``[]`` for empty/blank text.
    """
    return text.upper().split()


@dataclass(frozen=True)
class WordCounts:
    """Word counts of one (or, summed, many) prediction/truth pairs.

    Attributes:
        matched: words in both, counted with multiplicity (multiset intersection size).
        predicted: words in the prediction.
        truth: words in the ground truth.
    """

    matched: int
    predicted: int
    truth: int

    def __add__(self, other: "WordCounts") -> "WordCounts":
        return WordCounts(self.matched + other.matched, self.predicted + other.predicted,
                          self.truth + other.truth)


def word_counts(predicted: str, truth: str, tokenize: Callable[[str], list[str]] = words) -> WordCounts:
    """Multiset token counts of ``predicted`` against ``truth``.

    Args:
        tokenize: text -> tokens; :func:`words` (the default, the team's metric), or a
            diagnostic tokenizer of ``devtools.textmetrics`` (``colon_tokens``, ``char_tokens``).

    A word that occurs twice in the truth and once in the prediction matches once.
    """
    p, t = Counter(tokenize(predicted)), Counter(tokenize(truth))
    return WordCounts(matched=sum((p & t).values()), predicted=sum(p.values()), truth=sum(t.values()))


def prf(c: WordCounts) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts.

    Conventions for empty sides: precision is 1.0 when nothing was predicted,
    recall is 1.0 when the truth is empty (nothing to find), so two empty texts
    score (1, 1, 1); F1 is 0.0 when precision + recall is 0.

    Returns:
        ``(precision, recall, f1)``, each in [0, 1].
    """
    precision = c.matched / c.predicted if c.predicted else 1.0
    recall = c.matched / c.truth if c.truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def word_prf(predicted: str, truth: str) -> tuple[float, float, float]:
    """Bag-of-words precision, recall and F1 of ``predicted`` against ``truth``.

    Words are upper-cased and whitespace-split (:func:`words`); order and line
    breaks are ignored; duplicates count (multiset intersection). Empty-side
    conventions are those of :func:`prf`; an empty prediction of a non-empty
    truth scores ``(1.0, 0.0, 0.0)``.

    Returns:
        ``(precision, recall, f1)``, each in [0, 1].
    """
    return prf(word_counts(predicted, truth))


def micro_prf(pairs: Iterable[tuple[str, str]] | Iterable[WordCounts]) -> tuple[float, float, float]:
    """Micro-averaged P/R/F1 over many documents.

    Matched, predicted and truth word counts are summed over all documents
    before dividing, so long documents weigh more than short ones (unlike the
    mean of per-document F1).

    Args:
        pairs: ``(predicted, truth)`` text pairs, or :class:`WordCounts` already
            computed with :func:`word_counts`.

    Returns:
        ``(precision, recall, f1)``; ``(1.0, 1.0, 1.0)`` for no documents.
    """
    total = WordCounts(0, 0, 0)
    for item in pairs:
        total = total + (item if isinstance(item, WordCounts) else word_counts(*item))
    return prf(total)
