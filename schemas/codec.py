"""Encoding and validated decoding of messages (orjson + the pydantic models).

``decode`` is what every consumer calls on a record value: it turns malformed
input into an :class:`~ocrstream.errors.OcrstreamError` with a reason code, so a
bad record becomes a dead letter instead of a crash.

Versioning (see ``schemas/README.md``): ``schema_version`` is the integer major
version; a record of another major is refused. Within a major, ``decode`` is a
tolerant reader: fields it does not know (added by a newer producer, at any
nesting level) are ignored for validation but kept on the model, so ``encode``
writes them out again and pass-through objects carry them downstream.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from .errors import OcrstreamError, ReasonCode

from .messages import ALL_MESSAGES, SCHEMA_VERSION, TOLERANT_CONTEXT

M = TypeVar("M", bound=BaseModel)

JSON_DIR = Path(__file__).parent / "json"


def encode(message: BaseModel) -> bytes:
    """Serialize a message to compact UTF-8 JSON bytes (field aliases, no nulls dropped).

    Unknown fields a decoded message (or a nested object taken from one) carries
    are written too, after the declared fields of their object.
    """
    return orjson.dumps(message.model_dump(mode="json", by_alias=True))


def decode(value: bytes | None, model: type[M]) -> M:
    """Parse and validate a record value as a tolerant reader.

    Fields the model does not declare, at any nesting level, are accepted and
    kept (``model_extra`` of the object they belong to); declared fields are
    validated as usual and must be given under their wire names (``schema``,
    not ``schema_``).

    Args:
        value: the raw record value (UTF-8 JSON).
        model: the expected message class.

    Returns:
        The validated model, unknown fields included.

    Raises:
        OcrstreamError: ``invalid_json`` (no value, not JSON, or not an object),
            ``unsupported_schema_version`` (``schema_version`` missing or not the
            major this code knows, :data:`~schemas.messages.SCHEMA_VERSION`) or
            ``schema_violation`` (a declared field missing or invalid).
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
        return model.model_validate(obj, context=TOLERANT_CONTEXT, by_alias=True, by_name=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise OcrstreamError(
            ReasonCode.SCHEMA_VIOLATION, f"{exc.error_count()} error(s); first at {where}: {first['msg']}"
        ) from None


def json_schema(name: str) -> dict:
    """The JSON Schema (draft 2020-12) of a message, by its ``schema`` name.

    It is the consumers' view: every object allows additional properties (a
    newer minor version may add optional fields; readers ignore or pass them on).

    Raises:
        KeyError: ``name`` is not a message name (see ``ALL_MESSAGES``).
    """
    schema = ALL_MESSAGES[name].model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://ocrstream.dev/schemas/{name}.v{SCHEMA_VERSION}.schema.json"
    schema["$comment"] = (
        f"Major version {SCHEMA_VERSION} (schema_version). Compatible changes add optional properties "
        "without a version bump: consumers must accept and ignore (or pass through) properties they do "
        "not know; producers never add undeclared ones (they only pass on those they received). "
        "See schemas/README.md."
    )
    return schema


def export_json_schemas(directory: Path = JSON_DIR) -> list[Path]:
    """Write every message's JSON Schema to ``<directory>/<name>.v<major>.schema.json``.

    Returns:
        The paths written, one per message in ``ALL_MESSAGES``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ALL_MESSAGES:
        path = directory / f"{name}.v{SCHEMA_VERSION}.schema.json"
        path.write_bytes(orjson.dumps(json_schema(name), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        paths.append(path)
    return paths
