"""Schema evolution: consumers read newer minor versions (unknown fields), producers stay strict.

Pure unit tests (no broker): records as a newer producer would write them, with
an added top-level field and added nested fields, go through today's
``schemas.decode``; the known fields must come out right, the unknown ones must
survive re-encoding where a stage passes an object through, and the exported
JSON Schema must accept the same records. See ``schemas/README.md``.
"""

from __future__ import annotations

import copy
import json

import jsonschema
import orjson
import pytest
from pydantic import ValidationError

from ocrstream.errors import OcrstreamError
from schemas import (SCHEMA_VERSION, Detection, DocumentRef, DocumentResult, EngineInfo, ObjectRef, Page,
                     PageResult, PageTask, decode, encode)
from schemas.codec import JSON_DIR

SOURCE = {"bucket": "ocrstream", "key": "uploads/d1/scan.pdf", "filename": "scan.pdf", "etag": "abc",
          "version_id": None, "size": 48213, "content_type": "application/pdf"}
SQUARE = [[402.0, 118.0], [871.0, 118.0], [871.0, 146.0], [402.0, 146.0]]
ENGINE = {"name": "onnxruntime", "det_model": "det", "rec_model": "rec", "device": "cpu", "version": "3.10"}

# What a newer (minor) producer might add: one top-level field and nested ones.
NEW_TOP = {"sla": "gold"}
NEW_SOURCE = {"region": "eu-west-1", "checksum": {"sha256": "00ff"}}
NEW_DETECTION = {"language": "en", "angle_deg": 0.5}
NEW_PAGE = {"rotation_deg": 90}
NEW_ENGINE = {"precision": "fp16"}


def document_ref() -> dict:
    return {"schema": "document_ref", "schema_version": 1, "document_id": "d1",
            "source": {**SOURCE, **NEW_SOURCE}, "submitted_at": 1795313695978,
            "options": {"dpi": 200, "deskew": True}, **NEW_TOP}


def page_task() -> dict:
    return {"schema": "page_task", "schema_version": 1, "document_id": "d1", "source": {**SOURCE, **NEW_SOURCE},
            "page_number": 2, "page_count": 3, "kind": "pdf", "dpi": 150, "submitted_at": 1795313695978,
            **NEW_TOP}


def page_result(page_number: int = 1) -> dict:
    return {"schema": "page_result", "schema_version": 1, "document_id": "d1", "source": {**SOURCE, **NEW_SOURCE},
            "page_number": page_number, "page_count": 2, "status": "succeeded", "error": None,
            "width": 1275, "height": 1650, "dpi": 150,
            "detections": [{"text": f"line {page_number}", "confidence": 0.987, "polygon": SQUARE,
                            **NEW_DETECTION}],
            "timings_ms": {"det_ms": 612.4, "rec_ms": 980.2}, "engine": {**ENGINE, **NEW_ENGINE},
            "worker_id": "w1", "submitted_at": 1795313695978, "completed_at": 1795313699120, **NEW_TOP}


def document_result() -> dict:
    return {"schema": "document_result", "schema_version": 1, "document_id": "d1",
            "source": {**SOURCE, **NEW_SOURCE}, "status": "failed",
            "error": {"code": "engine_error", "message": "page 1: boom", "retryable": False},
            "page_count": 1,
            "pages": [{"page_number": 1, "status": "failed", "error": None, "width": 10, "height": 20, "dpi": None,
                       "detections": [{"text": "x", "confidence": 0.5, "polygon": SQUARE, **NEW_DETECTION}],
                       "timings_ms": {"det_ms": 1.0}, **NEW_PAGE}],
            "engine": {**ENGINE, **NEW_ENGINE}, "timings_ms": {"end_to_end_ms": 3142.0},
            "submitted_at": 1795313695978, "completed_at": 1795313699120, **NEW_TOP}


def raw(obj: dict) -> bytes:
    return orjson.dumps(obj)


def wire(message) -> dict:
    """What ``encode`` puts on the wire, as a dict."""
    return orjson.loads(encode(message))


def validator(name: str) -> jsonschema.Draft202012Validator:
    """Validator for the committed (exported) JSON Schema file of a message."""
    return jsonschema.Draft202012Validator(json.loads((JSON_DIR / f"{name}.v1.schema.json").read_text()))


# --- consumers: tolerant readers --------------------------------------------------------------

def test_document_ref_with_unknown_fields_decodes_and_the_splitter_passes_source_through():
    ref = decode(raw(document_ref()), DocumentRef)
    assert (ref.document_id, ref.submitted_at, ref.options.dpi) == ("d1", 1795313695978, 200)
    assert ref.source.bucket == "ocrstream" and ref.source.key == "uploads/d1/scan.pdf" and ref.source.size == 48213
    assert ref.model_extra == NEW_TOP and ref.source.model_extra == NEW_SOURCE
    assert ref.options.model_extra == {"deskew": True}
    # Re-encoding the decoded record gives the record back, unknown fields included.
    assert wire(ref) == document_ref()
    # As the splitter does: source copied (size updated) into a new page task.
    task = PageTask(document_id=ref.document_id, source=ref.source.model_copy(update={"size": 7}), page_number=1,
                    page_count=1, kind="pdf", dpi=ref.options.dpi, submitted_at=ref.submitted_at)
    out = wire(task)
    assert out["source"] == {**SOURCE, **NEW_SOURCE, "size": 7}
    assert "sla" not in out, "a top-level field of the input is not forwarded into a new message"
    assert decode(encode(task), PageTask) == task


def test_page_task_with_unknown_fields_decodes_and_the_worker_passes_source_through():
    task = decode(raw(page_task()), PageTask)
    assert (task.document_id, task.page_number, task.page_count, task.kind, task.dpi) == ("d1", 2, 3, "pdf", 150)
    assert task.source.model_extra == NEW_SOURCE and task.model_extra == NEW_TOP
    assert wire(task) == page_task()
    # As the worker does: source copied into the page result.
    result = PageResult(document_id=task.document_id, source=task.source, page_number=task.page_number,
                        page_count=task.page_count, width=10, height=20, dpi=task.dpi,
                        detections=[Detection(text="a", polygon=SQUARE, confidence=0.9)],
                        engine=EngineInfo(name="onnxruntime"), worker_id="w1", submitted_at=task.submitted_at,
                        completed_at=task.submitted_at + 5)
    assert wire(result)["source"] == {**SOURCE, **NEW_SOURCE}
    # The worker's result_too_large path: a model_copy keeps the passed-through fields.
    failed = result.model_copy(update={"status": "failed", "detections": []})
    assert wire(failed)["source"] == {**SOURCE, **NEW_SOURCE}


def test_page_result_with_unknown_fields_decodes_and_the_assembler_passes_nested_objects_through():
    from consumers.assembler import assemble, without_detections

    pages = [decode(raw(page_result(n)), PageResult) for n in (2, 1)]
    first = pages[1]
    assert (first.page_number, first.width, first.height, first.engine.name) == (1, 1275, 1650, "onnxruntime")
    assert first.detections[0].text == "line 1" and first.detections[0].confidence == 0.987
    assert first.detections[0].polygon == SQUARE
    assert first.detections[0].model_extra == NEW_DETECTION and first.engine.model_extra == NEW_ENGINE
    assert wire(first) == page_result(1)

    doc = assemble(pages, completed_at=1795313699999)
    out = wire(doc)
    assert out["source"] == {**SOURCE, **NEW_SOURCE}
    assert out["engine"] == {**ENGINE, **NEW_ENGINE}
    assert [p["detections"][0] for p in out["pages"]] == [
        {"text": f"line {n}", "confidence": 0.987, "polygon": SQUARE, **NEW_DETECTION} for n in (1, 2)]
    assert decode(encode(doc), DocumentResult) == doc
    validator("document_result").validate(out)
    small = wire(without_detections(doc))
    assert small["source"] == {**SOURCE, **NEW_SOURCE} and all(p["detections"] == [] for p in small["pages"])


def test_document_result_with_unknown_fields_decodes():
    doc = decode(raw(document_result()), DocumentResult)
    assert (doc.document_id, doc.status, doc.page_count, doc.completed_at) == ("d1", "failed", 1, 1795313699120)
    assert doc.error.code == "engine_error" and doc.error.model_extra == {"retryable": False}
    page = doc.pages[0]
    assert (page.page_number, page.width, page.height, page.model_extra) == (1, 10, 20, NEW_PAGE)
    assert page.detections[0].model_extra == NEW_DETECTION
    assert doc.text() == "x"
    assert wire(doc) == document_result()


@pytest.mark.parametrize("name, make, model", [
    ("document_ref", document_ref, DocumentRef), ("page_task", page_task, PageTask),
    ("page_result", page_result, PageResult), ("document_result", document_result, DocumentResult)])
def test_exported_json_schema_accepts_the_extended_records(name, make, model):
    record = make()
    validator(name).validate(record)
    # Declared fields are still checked, by both: a known nested field of the wrong type is refused.
    bad = copy.deepcopy(record)
    bad["source"]["size"] = "big"
    assert not validator(name).is_valid(bad)
    with pytest.raises(OcrstreamError) as e:
        decode(raw(bad), model)
    assert e.value.code == "schema_violation"


def test_unknown_fields_do_not_hide_errors_in_known_ones():
    obj = page_result()
    obj["detections"][0]["confidence"] = 1.5
    with pytest.raises(OcrstreamError) as e:
        decode(raw(obj), PageResult)
    assert e.value.code == "schema_violation" and "detections.0.confidence" in str(e.value)
    obj = document_ref()
    del obj["source"]["bucket"]
    with pytest.raises(OcrstreamError) as e:
        decode(raw(obj), DocumentRef)
    assert e.value.code == "schema_violation" and "source.bucket" in str(e.value)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99, "1.1", None])
def test_other_major_schema_versions_are_still_refused(version):
    for make, model in [(document_ref, DocumentRef), (page_task, PageTask), (page_result, PageResult),
                        (document_result, DocumentResult)]:
        obj = {**make(), "schema_version": version}
        with pytest.raises(OcrstreamError) as e:
            decode(raw(obj), model)
        assert e.value.code == "unsupported_schema_version"


def test_decode_reads_wire_names_only():
    # "schema_" is the Python name of "schema": on the wire it is just an unknown field.
    ref = decode(raw({**document_ref(), "schema_": "something"}), DocumentRef)
    assert ref.schema_ == "document_ref" and ref.model_extra["schema_"] == "something"


# --- producers: strict writers ----------------------------------------------------------------

def test_constructing_a_message_with_an_unknown_field_still_raises():
    with pytest.raises(ValidationError) as e:
        ObjectRef(**SOURCE, region="eu")
    assert e.value.errors()[0]["type"] == "extra_forbidden" and "region" in str(e.value)
    with pytest.raises(ValidationError):
        PageTask(document_id="d", source=ObjectRef(**SOURCE), page_number=1, page_count=1, kind="pdf",
                 submitted_at=1, sla="gold")
    with pytest.raises(ValidationError) as e:  # nested raw input too
        PageTask(document_id="d", source={**SOURCE, "region": "eu"}, page_number=1, page_count=1, kind="pdf",
                 submitted_at=1)
    assert e.value.errors()[0]["loc"] == ("source",)
    with pytest.raises(ValidationError):
        Detection(text="a", polygon=SQUARE, confidence=0.5, language="en")
    with pytest.raises(ValidationError):
        Page(page_number=1, width=1, height=1, detections=[{"text": "a", "polygon": SQUARE, "confidence": 0.5,
                                                             "language": "en"}])
    # model_validate without the tolerant context is the strict (producer) path as well.
    with pytest.raises(ValidationError):
        DocumentRef.model_validate(document_ref())


def test_assigning_or_copying_in_an_unknown_field_raises():
    ref = DocumentRef(document_id="d", source=ObjectRef(**SOURCE), submitted_at=1)
    with pytest.raises(ValueError):
        ref.sla = "gold"
    with pytest.raises(ValueError):
        ref.source.model_copy(update={"region": "eu"})
    ref.submitted_at = 2  # declared fields are still assignable
    assert ref.model_copy(update={"document_id": "e"}).document_id == "e"
    # A decoded unknown field may be updated on the object that carries it.
    decoded = decode(raw(document_ref()), DocumentRef)
    assert wire(decoded.source.model_copy(update={"region": "us"}))["region"] == "us"


def test_messages_built_in_code_emit_only_declared_fields():
    ref = DocumentRef(document_id="d", source=ObjectRef(**SOURCE), submitted_at=1)
    assert ref.model_extra == {} and ref.source.model_extra == {}
    assert set(wire(ref)) == {"schema", "schema_version", "document_id", "source", "submitted_at", "options"}
    assert decode(encode(ref), DocumentRef) == ref


# --- a compatible change: page ranges (DocumentRef.pages, page_range downstream) --------------

@pytest.mark.parametrize("name, make, model, field, value", [
    ("document_ref", document_ref, DocumentRef, "pages", "1-3,7"),
    ("page_task", page_task, PageTask, "page_range", "1-3"),
    ("page_result", page_result, PageResult, "page_range", "1-2"),
    ("document_result", document_result, DocumentResult, "page_range", "1")])
def test_page_ranges_are_an_optional_field_that_old_records_do_without(name, make, model, field, value):
    old = make()  # a record of a producer that predates the field: reads as "every page", unchanged
    decoded = decode(raw(old), model)
    assert getattr(decoded, field) is None and field not in wire(decoded)
    assert wire(decoded) == old
    new = {**old, field: value}  # a newer producer's record: valid for today's readers and the exported schema
    validator(name).validate(new)
    assert getattr(decode(raw(new), model), field) == value and wire(decode(raw(new), model)) == new


@pytest.mark.parametrize("pages", ["", "3-1", "a", "x" * 5000])
def test_a_malformed_page_range_is_not_a_schema_violation(pages):
    """The schema does not constrain ``pages``: the splitter refuses it with the clearer
    ``invalid_page_range`` (tests/test_page_ranges.py), after reading the record's id."""
    ref = decode(raw({**document_ref(), "pages": pages}), DocumentRef)
    assert ref.pages == pages
    validator("document_ref").validate({**document_ref(), "pages": pages})
    with pytest.raises(OcrstreamError) as e:  # a wrong type still is one
        decode(raw({**document_ref(), "pages": 7}), DocumentRef)
    assert e.value.code == "schema_violation"
