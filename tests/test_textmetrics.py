"""Accuracy metrics: exact values on hand-made cases, plus properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from devtools.textmetrics import (
    WordCounts, cer, load_sroie_truth, micro_prf, normalize_whitespace, prf, word_counts, word_prf, words,
)


def test_words_upper_cases_and_splits_on_any_whitespace():
    assert words("Total  due:\n12.50\tRM\f x") == ["TOTAL", "DUE:", "12.50", "RM", "X"]
    assert words("") == [] and words(" \n ") == []


def test_identical_texts_score_perfectly():
    text = "INVOICE 42\nTotal 12.50"
    assert word_prf(text, text) == (1.0, 1.0, 1.0)
    assert cer(text, text) == 0.0


def test_word_prf_ignores_case_order_and_line_breaks():
    assert word_prf("total 12.50\ninvoice", "INVOICE TOTAL 12.50") == (1.0, 1.0, 1.0)


def test_one_substituted_word():
    p, r, f1 = word_prf("the cat sat down", "the dog sat down")
    assert (p, r) == (0.75, 0.75)
    assert f1 == pytest.approx(0.75)


def test_extra_and_missing_words():
    # 2 of 3 predicted words are right; 2 of 4 truth words were found.
    p, r, f1 = word_prf("a b z", "a b c d")
    assert p == pytest.approx(2 / 3) and r == pytest.approx(0.5)
    assert f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_empty_prediction_and_empty_truth():
    assert word_prf("", "some text") == (1.0, 0.0, 0.0)
    assert word_prf("noise", "") == (0.0, 1.0, 0.0)
    assert word_prf("", "") == (1.0, 1.0, 1.0)
    assert cer("", "abcd") == 1.0
    assert cer("", "") == 0.0 and cer("x", "") == 1.0


def test_duplicates_count_as_a_multiset():
    # "RM" occurs twice in the truth and three times in the prediction: 2 match.
    c = word_counts("RM RM RM 5", "RM 5 RM")
    assert c == WordCounts(matched=3, predicted=4, truth=3)
    assert word_prf("RM RM RM 5", "RM 5 RM")[:2] == (0.75, 1.0)
    assert word_prf("RM", "RM RM")[:2] == (1.0, 0.5)


def test_cer_counts_edits_over_truth_length():
    assert cer("kitten", "sitting") == pytest.approx(3 / 7)
    assert cer("abc", "abd") == pytest.approx(1 / 3)
    assert cer("abcd", "ab") == pytest.approx(1.0)  # can reach and exceed 1 with insertions
    assert cer("abcdef", "ab") == pytest.approx(2.0)


def test_cer_normalises_whitespace_but_keeps_case():
    assert cer("  Total\n\n 12.50 \f", "Total 12.50") == 0.0
    assert cer("total", "Total") == pytest.approx(1 / 5)
    assert normalize_whitespace(" a \t b\n\nc ") == "a b c"


def test_micro_average_weights_documents_by_words():
    pairs = [("a b c d", "a b c d"), ("x", "y")]
    p, r, f1 = micro_prf(pairs)
    assert (p, r) == (4 / 5, 4 / 5)
    assert f1 == pytest.approx(0.8)
    # Same result from precomputed counts; no documents scores as perfect.
    assert micro_prf([word_counts(*pair) for pair in pairs]) == (p, r, f1)
    assert micro_prf([]) == (1.0, 1.0, 1.0)
    assert prf(WordCounts(0, 0, 5)) == (1.0, 0.0, 0.0)


def test_load_sroie_truth_splits_on_first_eight_commas(tmp_path):
    f = tmp_path / "001.csv"
    f.write_bytes(b"1,2,3,4,5,6,7,8,NO.53 55,57 & 59, JALAN\r\n\r\n9,9,9,9,9,9,9,9,TOTAL 9.00\n")
    assert load_sroie_truth(f) == "NO.53 55,57 & 59, JALAN\nTOTAL 9.00"


def test_load_sroie_truth_falls_back_to_latin1(tmp_path):
    f = tmp_path / "002.csv"
    f.write_bytes("1,2,3,4,5,6,7,8,CAF\xc9 \xa3 5\n".encode("latin-1"))
    assert load_sroie_truth(f) == "CAF\u00c9 \u00a3 5"


def test_load_sroie_truth_rejects_short_lines(tmp_path):
    f = tmp_path / "003.csv"
    f.write_text("1,2,3,TEXT\n")
    with pytest.raises(ValueError, match="003.csv:1"):
        load_sroie_truth(f)


text = st.text(alphabet=st.sampled_from("abcAB 12.\n\t"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(text, text)
def test_prf_in_unit_interval_and_roles_swap(predicted, truth):
    p, r, f1 = word_prf(predicted, truth)
    assert 0.0 <= p <= 1.0 and 0.0 <= r <= 1.0 and 0.0 <= f1 <= 1.0
    assert min(p, r) - 1e-12 <= f1 <= max(p, r) + 1e-12  # harmonic mean lies between
    # Swapping prediction and truth swaps precision and recall; F1 is unchanged.
    p2, r2, f2 = word_prf(truth, predicted)
    assert (p2, r2) == (r, p)
    assert f2 == pytest.approx(f1)


@settings(max_examples=200, deadline=None)
@given(text, text)
def test_cer_zero_iff_normalised_equal(predicted, truth):
    c = cer(predicted, truth)
    assert c >= 0.0
    assert (c == 0.0) == (normalize_whitespace(predicted) == normalize_whitespace(truth))


@settings(max_examples=100, deadline=None)
@given(text)
def test_cer_of_whitespace_variants_is_zero(s):
    assert cer(s.replace(" ", "\n  "), s) == 0.0


def test_diagnostic_tokenizers_separate_spacing_from_reading_errors():
    from devtools.textmetrics import char_tokens, colon_tokens

    read, truth = "TEL:03-3271 TAXINVOICE", "TEL : 03-3271\nTAX INVOICE"
    assert word_counts(read, truth) == WordCounts(matched=0, predicted=2, truth=5)
    # ':' as its own token: the colon spacing no longer counts, the merged words still do
    assert colon_tokens(read) == ["TEL", ":", "03-3271", "TAXINVOICE"]
    assert word_counts(read, truth, colon_tokens) == WordCounts(matched=3, predicted=4, truth=5)
    # bag of characters: spacing ignored, a misread character still costs
    assert prf(word_counts(read, truth, char_tokens)) == (1.0, 1.0, 1.0)
    assert word_counts("TEL:O3", "TEL : 03", char_tokens) == WordCounts(matched=5, predicted=6, truth=6)


def test_punct_tokens_split_punctuation_but_not_words():
    from devtools.textmetrics import punct_tokens

    assert punct_tokens("Tel:03-3271 TAXINVOICE (RM) s/n_1") == [
        "TEL", ":", "03", "-", "3271", "TAXINVOICE", "(", "RM", ")", "S", "/", "N", "_", "1"]
    # spacing around punctuation no longer counts; a missing space between words still does
    assert prf(word_counts("TEL:03-3271", "TEL : 03-3271", punct_tokens)) == (1.0, 1.0, 1.0)
    assert word_counts("TAXINVOICE", "TAX INVOICE", punct_tokens) == WordCounts(matched=0, predicted=1, truth=2)
    assert punct_tokens("ÉTÉ café") == ["ÉTÉ", "CAFÉ"]  # letters of any script are letters
