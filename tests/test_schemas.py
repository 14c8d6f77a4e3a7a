"""Message contracts: JSON Schema files in step with the models, codec round trips, validation errors."""

from __future__ import annotations

import json

import jsonschema
import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from ocrstream.errors import OcrstreamError
from schemas import (DocumentRef, DocumentResult, Detection, EngineInfo, ObjectRef, Page, PageResult, decode,
                     encode, json_schema)
from schemas.codec import JSON_DIR
from schemas.messages import ALL_MESSAGES


@pytest.mark.parametrize("name", list(ALL_MESSAGES))
def test_committed_json_schema_matches_models(name):
    committed = json.loads((JSON_DIR / f"{name}.v1.schema.json").read_text())
    assert committed == json.loads(orjson.dumps(json_schema(name))), "run `ocrstream schemas export`"
    jsonschema.Draft202012Validator.check_schema(committed)


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
coords = st.floats(min_value=0, max_value=20000, allow_nan=False, allow_infinity=False)
detections = st.builds(Detection, text=texts, polygon=st.lists(st.lists(coords, min_size=2, max_size=2),
                                                              min_size=4, max_size=4),
                       confidence=st.floats(0, 1))
sources = st.builds(ObjectRef, bucket=st.from_regex(r"[a-z0-9][a-z0-9-]{2,20}", fullmatch=True),
                    key=texts.filter(bool), filename=texts.filter(bool))
page_results = st.builds(
    PageResult, document_id=st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True), source=sources,
    page_number=st.integers(1, 5000), page_count=st.integers(1, 5000), width=st.integers(0, 30000),
    height=st.integers(0, 30000), dpi=st.one_of(st.none(), st.integers(36, 600)),
    detections=st.lists(detections, max_size=5), engine=st.builds(EngineInfo, name=st.just("onnxruntime")),
    worker_id=texts, submitted_at=st.integers(0, 2**42), completed_at=st.integers(0, 2**42),
)


# Built once: jsonschema.validate() would re-check the schema against the metaschema per call.
PAGE_RESULT_VALIDATOR = jsonschema.Draft202012Validator(json_schema("page_result"))
DOCUMENT_REF_VALIDATOR = jsonschema.Draft202012Validator(json_schema("document_ref"))


@hsettings(max_examples=150, deadline=None)
@given(page_results)
def test_page_result_roundtrip_and_jsonschema_agree(result):
    raw = encode(result)
    assert decode(raw, PageResult) == result
    PAGE_RESULT_VALIDATOR.validate(orjson.loads(raw))


@hsettings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_a_reason_coded_error(raw):
    try:
        decode(raw, DocumentRef)
    except OcrstreamError as exc:
        assert exc.code.value in {"invalid_json", "schema_violation", "unsupported_schema_version"}


@hsettings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["schema", "schema_version", "document_id", "source", "submitted_at", "x"]),
                       st.one_of(st.none(), st.integers(-2**40, 2**40), texts, st.just({"bucket": "abc", "key": "k", "filename": "f"}))))
def test_validator_and_json_schema_accept_the_same_documents(obj):
    raw = orjson.dumps(obj)
    try:
        decode(raw, DocumentRef)
        ok = True
    except OcrstreamError:
        ok = False
    schema_ok = DOCUMENT_REF_VALIDATOR.is_valid(obj) and obj.get("schema_version") == 1
    assert ok == schema_ok, obj


def test_reason_codes():
    with pytest.raises(OcrstreamError) as e:
        decode(b"[1,2]", DocumentRef)
    assert e.value.code == "invalid_json"
    with pytest.raises(OcrstreamError) as e:
        decode(orjson.dumps({"schema_version": 2}), DocumentRef)
    assert e.value.code == "unsupported_schema_version"
    with pytest.raises(OcrstreamError) as e:
        decode(orjson.dumps({"schema_version": 1, "document_id": "a b"}), DocumentRef)
    assert e.value.code == "schema_violation"


def test_document_result_text_joins_pages_and_lines():
    det = lambda t: Detection(text=t, polygon=[[0, 0], [1, 0], [1, 1], [0, 1]], confidence=0.9)  # noqa: E731
    r = DocumentResult(document_id="d", source=None, status="succeeded", page_count=2, completed_at=1,
                       pages=[Page(page_number=1, width=1, height=1, detections=[det("a"), det("b")]),
                              Page(page_number=2, width=1, height=1, detections=[det("c")])])
    assert r.text() == "a\nb\fc"
