"""S3 bucket notifications as read from Kafka (MinIO's Kafka target, or any S3 event bridge).

MinIO publishes one record per event to the topic named by
``MINIO_NOTIFY_KAFKA_TOPIC_<ID>``; the record key is ``bucket/object`` and the value is

    {"EventName": "s3:ObjectCreated:Put", "Key": "bucket/object",
     "Records": [{"eventName": "s3:ObjectCreated:Put",
                  "s3": {"bucket": {"name": ...},
                         "object": {"key": <URL-encoded>, "size": ..., "eTag": ..., "versionId": ...}}}]}

``Records`` has the structure of AWS's S3 event message (event structure version 2.x,
https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html),
so an AWS S3 -> Kafka bridge's records parse too. Object keys in events are URL-encoded
with ``+`` for a space (AWS: "The s3 key provided in the event notification is URL encoded";
MinIO: Go's ``url.QueryEscape``), hence :func:`urllib.parse.unquote_plus`.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ocrstream.errors import OcrstreamError, ReasonCode


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Bucket(_Loose):
    name: str


class _Object(_Loose):
    key: str
    size: int | None = None
    etag: str | None = Field(None, alias="eTag")
    version_id: str | None = Field(None, alias="versionId")
    sequencer: str | None = None


class _S3(_Loose):
    bucket: _Bucket
    object: _Object


class _Record(_Loose):
    event_name: str = Field(alias="eventName")
    s3: _S3


class _Message(_Loose):
    records: list[_Record] = Field(alias="Records")


class ObjectEvent(BaseModel):
    """One S3 event about one object version.

    Attributes:
        name: the event name without the ``s3:`` prefix, e.g. ``ObjectCreated:Put``.
        bucket: bucket name.
        key: object key, decoded.
        etag: the ETag without quotes (None when the event carries none, e.g. removals).
        version_id: the object version (None in unversioned buckets).
        size: object size in bytes (None for removals).
    """

    name: str
    bucket: str
    key: str
    etag: str | None = None
    version_id: str | None = None
    size: int | None = None

    @property
    def created(self) -> bool:
        """True for every ``ObjectCreated:*`` event (Put, Post, Copy, CompleteMultipartUpload)."""
        return self.name.startswith("ObjectCreated:")


def parse_object_events(value: bytes | None) -> list[ObjectEvent]:
    """The object events in one notification record.

    Args:
        value: the Kafka record value (UTF-8 JSON).

    Returns:
        One :class:`ObjectEvent` per entry of ``Records`` (MinIO sends one; AWS may batch).

    Raises:
        OcrstreamError: ``invalid_json`` when the value is missing or not JSON,
            ``schema_violation`` when it is JSON but not an S3 event message.
    """
    if value is None:
        raise OcrstreamError(ReasonCode.INVALID_JSON, "event record has no value")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise OcrstreamError(ReasonCode.INVALID_JSON, f"event is not valid JSON: {exc}") from None
    try:
        message = _Message.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OcrstreamError(ReasonCode.SCHEMA_VIOLATION, f"not an S3 event message: {where}: {first['msg']}") from None
    events = []
    for r in message.records:
        name = r.event_name.removeprefix("s3:")
        etag = r.s3.object.etag.strip('"') if r.s3.object.etag else None
        events.append(ObjectEvent(name=name, bucket=r.s3.bucket.name, key=unquote_plus(r.s3.object.key),
                                  etag=etag, version_id=r.s3.object.version_id or None, size=r.s3.object.size))
    return events
