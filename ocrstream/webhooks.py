"""Completion webhooks: which URLs a document may name, and what is sent there, signed how.

A document may name a ``webhook_url`` (``DocumentRef.webhook_url``: ``ocrstream submit --webhook``,
``DocumentPublisher.publish_object(webhook_url=)``, the gateway's ``webhook_url`` field). The
``ocrstream webhooks`` stage (``consumers/webhooks.py``) POSTs a summary of the document's result
there once it is on the results topic. The service makes that request with its own network
position, so the URL is a trust boundary like the object a reference names
(:mod:`ocrstream.sources`): it must name a host of *its tenant's* entry in
``OCRSTREAM_WEBHOOK_ALLOWED_HOSTS`` (the tenant is the topic's, never the message's). It is
checked where it enters (``submit``, the publish library, the gateway: refused before anything is
sent), by the splitter before the object is read (``webhook_not_allowed`` /
``invalid_webhook_url``: a dead letter and a ``failed`` result), and again by the webhooks stage
before each call (a results record is only as trusted as whoever can write the topic).

Allowed hosts. An entry is ``host``, ``host:port``, ``[v6-address]:port`` (https) or
``http://host[:port]`` (plain http for that host and port only). Without a port an entry admits
its scheme's default port only (443, 80). Hosts are compared by name, lower-cased, exactly:
``hooks.example.com`` admits neither ``a.hooks.example.com`` nor ``hooks.example.com.``. The names
are resolved by the stage's resolver at call time, so list names whose DNS you trust (an
operator's list, not a publisher's). Redirects are not followed (a 3xx is a final answer), so a
receiver cannot bounce a call to a host that is not listed.

A URL is malformed (``invalid_webhook_url``) when it is longer than :data:`MAX_URL_LENGTH`, holds
whitespace, control or non-ASCII characters, is not absolute ``http``/``https``, has no host, an
invalid port, user credentials (``https://user:pw@host/``: the signature is what authenticates
a call, and ``allowed.com@evil.com`` style URLs confuse people) or a fragment.

What is sent (:func:`summary`): the document id, status, error, page count, failed pages, the
source's bucket/key/filename, timings and times; never detections, text or anything secret.
Headers (:func:`signed_headers`): ``X-Ocrstream-Signature: t=<unix s>,v1=<hex>`` where ``v1`` is
HMAC-SHA256 with the tenant's secret (``OCRSTREAM_WEBHOOK_SECRETS``) over ``"<t>." + body``
(Stripe's scheme; :func:`verify_signature` is the receiver's side), ``X-Ocrstream-Delivery``: an id
that is the same for every call of one result, its replays and its re-publications
(:func:`delivery_id`), so a receiver de-duplicates; ``X-Ocrstream-Event: document.completed``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

import orjson

from schemas import DocumentResult

from .errors import OcrstreamError, ReasonCode
from .settings import Settings
from .webhook_hosts import DEFAULT_PORTS, HostRule, parse_host_rules  # noqa: F401  (part of this API)

MAX_URL_LENGTH = 2048
"""Longest webhook URL accepted (characters): the common de-facto limit of browsers and servers."""

SIGNATURE_HEADER = "X-Ocrstream-Signature"
DELIVERY_HEADER = "X-Ocrstream-Delivery"
EVENT_HEADER = "X-Ocrstream-Event"
EVENT = "document.completed"
USER_AGENT = "ocrstream-webhooks/1"




def allowed_hosts(s: Settings, tenant: str | None) -> tuple[HostRule, ...]:
    """The webhook receivers ``tenant`` (None: the default tenant, key ``-``) may name; empty when
    it has no entry in ``OCRSTREAM_WEBHOOK_ALLOWED_HOSTS`` (or is not configured at all)."""
    if tenant is not None and tenant not in s.tenants:
        return ()
    return parse_host_rules(s.webhook_allowed_hosts.get("-" if tenant is None else tenant, ""))


def redact(url: str) -> str:
    """``scheme://host[:port]/...`` of a URL, for logs and dead letters: paths and queries often
    carry receivers' tokens, so they are never written anywhere but the records themselves."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/..."
    except ValueError:
        return "(unparsable URL)"


def check_webhook_url(s: Settings, url: str, tenant: str | None) -> str:
    """Refuse a webhook URL that is malformed or outside ``tenant``'s allowed hosts (see the
    module docstring).

    Returns:
        ``url``, unchanged (what the stage calls).

    Raises:
        OcrstreamError: ``invalid_webhook_url`` (malformed), ``webhook_not_allowed`` (scheme, host
            or port not in the tenant's entry, or the tenant has none). The message names the
            host and port, never the path or query.
    """
    def invalid(why: str) -> OcrstreamError:
        return OcrstreamError(ReasonCode.INVALID_WEBHOOK_URL, f"webhook_url: {why}")

    if not isinstance(url, str) or not url:
        raise invalid("empty")
    if len(url) > MAX_URL_LENGTH:
        raise invalid(f"{len(url)} characters, limit {MAX_URL_LENGTH}")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise invalid("whitespace, control or non-ASCII characters (percent-encode them)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise invalid(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise invalid("not an absolute http(s) URL")
    if not parts.hostname:
        raise invalid("no host")
    if "@" in parts.netloc:
        raise invalid("credentials in the URL are not accepted (the signature authenticates the call)")
    if "#" in url:
        raise invalid("a fragment is not sent to the receiver; remove it")
    host, port = parts.hostname, port or DEFAULT_PORTS[scheme]
    rules = allowed_hosts(s, tenant)
    if not any(rule.admits(scheme, host, port) for rule in rules):
        who = "the default tenant" if tenant is None else f"tenant {tenant}"
        shown = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
        listed = ", ".join(map(str, rules)) or "none: webhooks are off for it"
        raise OcrstreamError(ReasonCode.WEBHOOK_NOT_ALLOWED,
                             f"webhook_url {shown} is not an allowed receiver of {who} ({listed}; "
                             "OCRSTREAM_WEBHOOK_ALLOWED_HOSTS; plain http only where an entry says http://)")
    return url


def delivery_id(topic: str, result: DocumentResult) -> str:
    """The ``X-Ocrstream-Delivery`` id of the call for ``result``, read from ``topic``: a hash of the
    topic, the document id and the result's content without the moment it was published
    (``completed_at``, ``timings_ms.end_to_end_ms``). So it is the same for every retry, for a replay
    of the record (a crash between the call and the commit) and for a result the assembler
    published twice (at-least-once: a crash between the result and its done marker re-publishes
    it from the same page results), and differs for another outcome of the document (the complete
    result after ``incomplete``, a re-driven dead letter that now succeeds). 32 hex chars (SHA-256
    prefix)."""
    content = result.model_dump(mode="json", by_alias=True, exclude={"completed_at"})
    content["timings_ms"] = {k: v for k, v in content.get("timings_ms", {}).items() if k != "end_to_end_ms"}
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return hashlib.sha256(f"{topic}\0{result.document_id}\0{digest}".encode()).hexdigest()[:32]


def summary(result: DocumentResult, delivery: str, links_base: str | None = None) -> dict:
    """The JSON body of a webhook call for ``result``.

    Keys: ``event`` (``document.completed``), ``delivery_id``, ``document_id``, ``status``
    (``succeeded`` | ``failed``), ``error`` (``{code, message}`` or null; ``incomplete`` may be
    followed by a complete result and a second call), ``page_count``, ``page_range`` (only when
    pages were requested), ``failed_pages`` (``[{page_number, code}]``), ``source`` (``bucket``,
    ``key``, ``filename``, ``version_id``; null when unknown), ``timings_ms``, ``submitted_at``,
    ``completed_at`` (ms since the epoch), and ``links`` (``status``, ``text``, ``json``: the
    gateway's URLs) when ``links_base`` is set. No detections, no text.
    """
    body = {
        "event": EVENT, "delivery_id": delivery, "document_id": result.document_id, "status": result.status,
        "error": result.error.model_dump(mode="json") if result.error else None,
        "page_count": result.page_count,
        "failed_pages": [{"page_number": p.page_number, "code": p.error.code if p.error else None}
                         for p in result.pages if p.status == "failed"],
        "source": None if result.source is None else {
            "bucket": result.source.bucket, "key": result.source.key, "filename": result.source.filename,
            "version_id": result.source.version_id},
        "timings_ms": result.timings_ms, "submitted_at": result.submitted_at, "completed_at": result.completed_at,
    }
    if result.page_range is not None:
        body["page_range"] = result.page_range
    if links_base:
        doc = f"{links_base}/v1/documents/{result.document_id}"
        body["links"] = {"status": doc, "text": f"{doc}/text", "json": f"{doc}/json"}
    return body


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Ocrstream-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def signed_headers(secret: bytes, body: bytes, delivery: str, timestamp: int | None = None) -> dict[str, str]:
    """Every header of one call (a fresh timestamp per call, so a retry is not refused as stale)."""
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT, EVENT_HEADER: EVENT,
            DELIVERY_HEADER: delivery,
            SIGNATURE_HEADER: signature(secret, int(time.time()) if timestamp is None else timestamp, body)}


def verify_signature(secret: bytes, body: bytes, header: str, tolerance_s: float = 300.0,
                     now: float | None = None) -> bool:
    """The receiver's check (README "Webhooks"): ``header`` holds a ``v1`` HMAC of ``"<t>." + body``
    under ``secret`` and ``t`` is within ``tolerance_s`` seconds of ``now`` (replays of an old call
    are refused). Compares in constant time; False for a malformed header."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs((time.time() if now is None else now) - timestamp) <= tolerance_s
    return hmac.compare_digest(expected, fields.get("v1", "")) and fresh
