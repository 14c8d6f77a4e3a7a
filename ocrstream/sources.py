"""Which objects the service may read: the trust boundary between publishers and the S3 credentials.

Anything that can publish to an ingest topic names a bucket and a key; the service reads it
with its own credentials. So a reference is checked against ``OCRSTREAM_ALLOWED_SOURCES``
before any read (splitter) and again before the page is downloaded (worker: a page task is
only as trusted as whoever can write the pages topic). A reference elsewhere fails with
``forbidden_source`` and nothing is read: in the splitter a dead letter and a ``failed``
document result, in the worker a ``failed`` page result (so its document fails too).

Prefixes are folders (they end with ``/``), and the key is compared as it is, byte for byte
like S3 does, after :func:`~ocrstream.storage.validate_key` refused ``..`` segments: so
``inbox/`` admits ``inbox/a.pdf`` but neither ``inbox-private/a.pdf`` nor ``inbox/../hr/a.pdf``.

Each tenant (``OCRSTREAM_TENANTS``) has its own rules, chosen by the topic its reference
arrived on (see :mod:`topology.tenants`), so one tenant cannot name another's objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OcrstreamError, ReasonCode
from .settings import Settings
from .storage import validate_bucket, validate_key


@dataclass(frozen=True)
class SourceRule:
    """``bucket`` and a ``prefix`` (empty: the whole bucket, else ending with ``/``)."""

    bucket: str
    prefix: str

    def admits(self, bucket: str, key: str) -> bool:
        """True when ``bucket`` is this rule's and ``key`` (already validated) is in its folder."""
        return bucket == self.bucket and key.startswith(self.prefix)

    def __str__(self) -> str:
        return f"{self.bucket}/{self.prefix}"


def parse_rules(text: str) -> tuple[SourceRule, ...]:
    """``"b1/uploads/, b2/"`` -> rules; a prefix without a trailing ``/`` gets one.

    Raises:
        ValueError: an entry has no bucket.
    """
    rules = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        bucket, _, prefix = entry.partition("/")
        if not bucket:
            raise ValueError(f"allowed source {entry!r} has no bucket (expected bucket/prefix/)")
        rules.append(SourceRule(bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"))
    return tuple(rules)


def allowed_sources(s: Settings, tenant: str | None = None) -> tuple[SourceRule, ...]:
    """The rules in force for ``tenant``: its entry in ``OCRSTREAM_TENANTS``; for the default
    tenant (None) ``OCRSTREAM_ALLOWED_SOURCES``, else the configured bucket with the upload and
    drop-folder prefixes.

    Raises:
        OcrstreamError: ``forbidden_source``: ``tenant`` is not configured (a topic of a tenant
            that was removed from the settings: its references are refused, not read).
    """
    if tenant is not None:
        if tenant not in s.tenants:
            raise OcrstreamError(ReasonCode.FORBIDDEN_SOURCE, f"tenant {tenant!r} is not configured (OCRSTREAM_TENANTS)")
        return parse_rules(s.tenants[tenant])
    if s.allowed_sources.strip():
        return parse_rules(s.allowed_sources)
    return tuple(dict.fromkeys(SourceRule(s.bucket, p) for p in (s.upload_prefix, s.inbox_prefix)))


def check_source(s: Settings, bucket: str, key: str, tenant: str | None = None) -> str:
    """Refuse a reference outside the allowed sources of ``tenant`` (None: the default tenant;
    see module docstring and :func:`allowed_sources`).

    Returns:
        the key, unchanged.

    Raises:
        OcrstreamError: ``invalid_bucket``, ``invalid_key`` (the more precise codes first: see
            :func:`validate_bucket`, :func:`validate_key`), ``forbidden_source``.
    """
    validate_bucket(bucket)
    key = validate_key(key)
    rules = allowed_sources(s, tenant)
    if not any(rule.admits(bucket, key) for rule in rules):
        where = "OCRSTREAM_ALLOWED_SOURCES" if tenant is None else f"tenant {tenant}, OCRSTREAM_TENANTS"
        raise OcrstreamError(ReasonCode.FORBIDDEN_SOURCE,
                             f"s3://{bucket}/{key} is outside the allowed sources "
                             f"({', '.join(map(str, rules))}; {where})")
    return key
