"""Encoding and validated decoding of messages (orjson + the pydantic models).

``decode`` is what every consumer calls on a record value: it turns malformed
input into an :class:`~ocrstream.errors.OcrstreamError` with a reason code, so a
bad record becomes a dead letter instead of a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ocrstream.errors import OcrstreamError, ReasonCode

from .messages import ALL_MESSAGES, SCHEMA_VERSION

M = TypeVar("M", bound=BaseModel)

JSON_DIR = Path(__file__).parent / "json"


def encode(message: BaseModel) -> bytes:
    """Serialize a message to compact UTF-8 JSON bytes (field aliases, no nulls dropped)."""
    return orjson.dumps(message.model_dump(mode="json", by_alias=True))


def decode(value: bytes | None, model: type[M]) -> M:
    """Parse and validate a record value.

    Args:
        value: the raw record value (UTF-8 JSON).
        model: the expected message class.

    Raises:
        OcrstreamError: ``invalid_json`` (not JSON / not an object),
            ``unsupported_schema_version`` (a ``schema_version`` this code does
            not know) or ``schema_violation`` (anything else the model rejects).
    """
    if value is None:
        raise OcrstreamError(ReasonCode.INVALID_JSON, "record has no value (tombstone)")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise OcrstreamError(ReasonCode.INVALID_JSON, f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise OcrstreamError(ReasonCode.INVALID_JSON, f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        raise OcrstreamError(
            ReasonCode.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})",
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise OcrstreamError(
            ReasonCode.SCHEMA_VIOLATION, f"{exc.error_count()} error(s); first at {where}: {first['msg']}"
        ) from None


def json_schema(name: str) -> dict:
    """The JSON Schema (draft 2020-12) of a message, by its ``schema`` name."""
    schema = ALL_MESSAGES[name].model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://ocrstream.dev/schemas/{name}.v{SCHEMA_VERSION}.schema.json"
    return schema


def export_json_schemas(directory: Path = JSON_DIR) -> list[Path]:
    """Write every message's JSON Schema to ``<directory>/<name>.v1.schema.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ALL_MESSAGES:
        path = directory / f"{name}.v{SCHEMA_VERSION}.schema.json"
        path.write_bytes(orjson.dumps(json_schema(name), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        paths.append(path)
    return paths
