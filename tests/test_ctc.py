"""CTC decoding (ocrstream/engine/ctc.py): PaddleOCR's best path exactly when the space rule is
off, and spaces only where the recognizer's space probability between two characters says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from ocrstream.engine.ctc import ctc_greedy_decode

# blank first and space last, as in PP-OCR's character list
CHARS = ["blank", "A", "B", "C", ":", " "]
SPACE = len(CHARS) - 1


def _steps(*rows: dict[int, float]) -> np.ndarray:
    """Probabilities, one time step per row: the given classes, the rest of the mass on blank."""
    probs = np.zeros((len(rows), len(CHARS)), np.float32)
    for t, row in enumerate(rows):
        for c, p in row.items():
            probs[t, c] = p
        probs[t, 0] = 1.0 - sum(v for c, v in row.items() if c != 0)
    return probs


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 40), st.just(len(CHARS))),
              elements=st.floats(0.0, 1.0, width=32)))
def test_without_the_space_rule_it_is_paddleocrs_decoding(raw):
    from rapidocr.ch_ppocr_rec.utils import CTCLabelDecode

    probs = raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-6)
    ref = CTCLabelDecode(character=CHARS[1:-1])  # it adds blank and space itself
    assert ref.character == CHARS
    ((ref_text, ref_conf),), _ = ref(probs[None])
    text, conf = ctc_greedy_decode(probs, CHARS, 0.0)
    assert text == ref_text
    assert conf == pytest.approx(ref_conf if ref_text else 0.0, abs=1e-4)


def test_a_space_is_written_where_the_space_probability_between_characters_exceeds_the_threshold():
    probs = _steps({1: 0.9}, {SPACE: 0.2}, {2: 0.9}, {SPACE: 0.01}, {3: 0.9})
    assert ctc_greedy_decode(probs, CHARS, 0.0)[0] == "ABC"
    assert ctc_greedy_decode(probs, CHARS, 0.05)[0] == "A BC"
    assert ctc_greedy_decode(probs, CHARS, 0.005)[0] == "A B C"
    assert ctc_greedy_decode(probs, CHARS, 0.3)[0] == "ABC"
    # the confidence is the kept steps' mean, inserted spaces or not
    assert ctc_greedy_decode(probs, CHARS, 0.05)[1] == pytest.approx(0.9)


def test_between_two_letters_a_space_needs_the_letters_threshold():
    # CHARS: A, B, C letters, ":" not
    between_letters = _steps({1: 0.9}, {SPACE: 0.2}, {2: 0.9})
    after_colon = _steps({4: 0.9}, {SPACE: 0.2}, {2: 0.9})
    assert ctc_greedy_decode(between_letters, CHARS, 0.05, 0.3)[0] == "AB"
    assert ctc_greedy_decode(between_letters, CHARS, 0.05, 0.1)[0] == "A B"
    assert ctc_greedy_decode(after_colon, CHARS, 0.05, 0.3)[0] == ": B"
    assert ctc_greedy_decode(between_letters, CHARS, 0.0, 0.1)[0] == "AB"  # 0 turns the rule off


def test_the_models_own_spaces_are_kept_and_never_doubled():
    probs = _steps({1: 0.9}, {SPACE: 0.8}, {SPACE: 0.3}, {2: 0.9})
    assert ctc_greedy_decode(probs, CHARS, 0.05)[0] == "A B"
    assert ctc_greedy_decode(probs, CHARS, 0.0)[0] == "A B"


def test_adjacent_characters_use_their_own_steps_and_nothing_is_added_at_the_ends():
    # no blank step between the two characters: the evidence is in their own steps
    probs = _steps({SPACE: 0.4}, {1: 0.5, SPACE: 0.3}, {2: 0.6}, {SPACE: 0.4})
    assert ctc_greedy_decode(probs, CHARS, 0.1)[0] == "A B"
    assert ctc_greedy_decode(probs, CHARS, 0.35)[0] == "AB"
    assert ctc_greedy_decode(_steps({}, {}), CHARS, 0.05) == ("", 0.0)
    # a repeated class is one character (CTC), so no space can fall inside it
    assert ctc_greedy_decode(_steps({1: 0.9}, {1: 0.9, SPACE: 0.09}), CHARS, 0.05)[0] == "A"


def test_a_malformed_output_is_refused():
    with pytest.raises(ValueError, match="Tx6"):
        ctc_greedy_decode(np.zeros((4, 5), np.float32), CHARS, 0.05)


RECEIPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sroie-dev"


@pytest.mark.skipif(not (RECEIPTS / "051.jpg").is_file(), reason="../shared/data/sroie-dev absent")
def test_on_a_real_receipt_the_rule_writes_the_spaces_the_page_has():
    """Receipt 051 through the real engine: with the rule more of its ground-truth words are read,
    and only spaces differ between the two readings."""
    from PIL import Image

    from devtools.textmetrics import load_sroie_truth, word_counts
    from ocrstream.engine.onnx import OnnxEngine
    from ocrstream.settings import Settings

    image = np.ascontiguousarray(np.asarray(Image.open(RECEIPTS / "051.jpg").convert("RGB"))[:, :, ::-1])
    truth = load_sroie_truth(RECEIPTS / "051.csv")
    engine = OnnxEngine(Settings(), "onnxruntime")
    assert (engine.space_threshold, engine.letters_space_threshold) == (0.05, 0.3)  # the defaults
    texts = {}
    for threshold in (0.0, 0.05):
        engine.space_threshold = threshold
        (page,) = engine.ocr_batch([image])
        texts[threshold] = "\n".join(line.text for line in page.lines)
    before, after = (word_counts(texts[t], truth) for t in (0.0, 0.05))
    assert after.matched > before.matched
    assert texts[0.05].replace(" ", "") == texts[0.0].replace(" ", "")  # only spaces differ
