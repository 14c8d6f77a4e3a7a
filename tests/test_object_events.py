"""Parsing S3 bucket notifications (MinIO's Kafka target and AWS's event structure)."""

from __future__ import annotations

from urllib.parse import quote_plus

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocrstream.errors import OcrstreamError
from producers.object_events import parse_object_events


def _minio_record(key: str, name: str = "s3:ObjectCreated:Put", **obj) -> bytes:
    # Shape of a record MinIO's Kafka target published in tests/test_watch.py's MinIO (trimmed).
    return orjson.dumps({
        "EventName": name, "Key": f"bkt/{key}",
        "Records": [{"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": name,
                     "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "bkt", "arn": "arn:aws:s3:::bkt"},
                            "object": {"key": quote_plus(key), "size": 5,
                                       "eTag": "5d41402abc4b2a76b9719d911017c592", **obj}}}]})


def test_minio_record_gives_decoded_key_and_version():
    [ev] = parse_object_events(_minio_record("inbox/c d ü+.pdf", versionId="v1"))
    assert (ev.name, ev.bucket, ev.key, ev.etag, ev.version_id, ev.size) == (
        "ObjectCreated:Put", "bkt", "inbox/c d ü+.pdf", "5d41402abc4b2a76b9719d911017c592", "v1", 5)
    assert ev.created


def test_aws_batched_records_and_removals():
    value = orjson.dumps({"Records": [
        {"eventName": "ObjectCreated:CompleteMultipartUpload",
         "s3": {"bucket": {"name": "b"}, "object": {"key": "inbox/a.pdf", "eTag": '"abc-2"', "size": 9}}},
        {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "inbox/a.pdf"}}},
    ]})
    created, removed = parse_object_events(value)
    assert created.created and created.etag == "abc-2" and created.version_id is None
    assert not removed.created and removed.etag is None


@pytest.mark.parametrize("value, code", [
    (None, "invalid_json"), (b"{nope", "invalid_json"), (b"[]", "schema_violation"),
    (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {}}]}', "schema_violation"),
    (b'{"EventName": "s3:ObjectCreated:Put"}', "schema_violation"),
])
def test_bad_records_raise_with_a_reason_code(value, code):
    with pytest.raises(OcrstreamError) as e:
        parse_object_events(value)
    assert e.value.code == code


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60))
def test_any_key_survives_url_encoding(key):
    [ev] = parse_object_events(_minio_record(key))
    assert ev.key == key
