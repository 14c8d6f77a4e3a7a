"""CTC decoding of PP-OCR recognition output, with spaces taken from the recognizer's own evidence.

Greedy (best-path) CTC decoding as PaddleOCR's ``CTCLabelDecode`` and RapidOCR do it: the most
probable class per time step, repeated classes merged, the blank (class 0) dropped; the line's
confidence is the mean probability of the kept steps.

Spaces. PP-OCRv6 small often writes no space where the page has one (``TEL:03-3271`` for
``TEL : 03-3271``, ``TAXINVOICE``; RapidOCR issue #723 reports the same on Latin text), yet the
space class (the last one in PP-OCR's character list) still gets some probability in the time
steps between the two characters: the model has seen the gap, it just ranks blank above space.
:func:`ctc_greedy_decode` inserts a space between two characters when the space probability
somewhere between their time steps exceeds ``space_threshold`` (``letters_threshold`` between
two letters), and keeps the model's own spaces. Measured on SROIE receipts 000-049 (the tuning
half; README "Performance and accuracy", ``python bench/accuracy.py receipts --half tune``):
whitespace word F1 0.865 with the model's spaces only, 0.885 at a threshold of 0.05 (flat within
0.001 from 0.03 to 0.1, falling below 0.02), 0.887 with 0.3 between two letters. The second
threshold is for born-digital pages: at 0.05 everywhere it split words set in monospaced type
(``subcl as ses``; 53 manual pages: word F1 0.9052 -> 0.9046, CER 0.0578 -> 0.0581), at 0.3
between letters they read as without the rule (0.9052, 0.0579). A rule on the *width* of the gap
between characters (relative to the line's character pitch), the other evidence the CTC output
has, added nothing (one time step is 8 input pixels, about a third of a character).
"""

from __future__ import annotations

import numpy as np

BLANK = 0
"""CTC blank class (PaddleOCR's ``CTCLabelDecode`` puts it first)."""


def ctc_greedy_decode(probs: np.ndarray, characters: list[str], space_threshold: float = 0.0,
                      letters_threshold: float | None = None) -> tuple[str, float]:
    """Best-path decoding of one line's recognition output.

    Args:
        probs: ``TxC float32`` per-time-step class probabilities (softmax output of the PP-OCR
            recognizer; ``C == len(characters)``, class 0 the blank, the last class ``" "``).
        characters: the class labels (RapidOCR's ``CTCLabelDecode.character``: ``"blank"``, the
            model's character list, ``" "``).
        space_threshold: insert a space between two characters when the space class's
            probability exceeds this at some time step between them (0 = the model's own
            spaces only, exactly PaddleOCR's decoding).
        letters_threshold: the same between two letters (None = ``space_threshold``): inside
            words, where letters are spaced out (monospaced type), the space class gets as much
            probability as between words, so a space between letters needs more evidence.

    Returns:
        ``(text, confidence)``: confidence is the mean probability of the kept time steps (0.0
        for an empty line), as PaddleOCR computes it; inserted spaces do not change it.

    Raises:
        ValueError: ``probs`` is not ``TxC`` with ``C == len(characters)``.
    """
    if probs.ndim != 2 or probs.shape[1] != len(characters):
        raise ValueError(f"probs must be Tx{len(characters)}, got {probs.shape}")
    best = probs.argmax(axis=1)
    keep = best != BLANK
    keep[1:] &= best[1:] != best[:-1]
    frames = np.flatnonzero(keep)
    if frames.size == 0:
        return "", 0.0
    confidence = float(probs[frames, best[frames]].mean())
    space = len(characters) - 1
    if space_threshold <= 0 or characters[space] != " ":
        return "".join(characters[i] for i in best[frames]), confidence
    space_prob = probs[:, space]
    if letters_threshold is None:
        letters_threshold = space_threshold
    out: list[str] = []
    prev = -1  # time step of the previous character kept
    for f in frames:
        ch = characters[best[f]]
        if prev >= 0 and ch != " " and out[-1] != " ":
            # The steps strictly between the two characters; adjacent steps: the two themselves.
            gap = space_prob[prev + 1:f] if f > prev + 1 else space_prob[prev:f + 1]
            threshold = letters_threshold if ch.isalpha() and out[-1].isalpha() else space_threshold
            if gap.max() > threshold:
                out.append(" ")
        out.append(ch)
        prev = f
    return "".join(out), confidence
