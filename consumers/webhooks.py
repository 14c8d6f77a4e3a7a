"""The webhooks stage (``ocrstream webhooks``): completion callbacks, called once per document result.

A consumer group (``<group_prefix>webhooks``) on every tenant's document-results topic
(:meth:`~ocrstream.settings.Settings.results_topics`), on the shared stage runtime. For each
result that names a ``webhook_url`` (:attr:`schemas.DocumentResult.webhook_url`, set by the
publisher and carried through page tasks and page results):

1. the URL is checked again against the allowed hosts of the tenant *whose topic the record
   is on* (:func:`ocrstream.webhooks.check_webhook_url`; a record is only as trusted as whoever
   can write the topic): refused -> dead letter ``webhook_not_allowed`` / ``invalid_webhook_url``;
2. a result completed more than ``OCRSTREAM_WEBHOOK_MAX_AGE_S`` ago is not called (a stage that
   starts without committed offsets would otherwise call every document in the compacted topic);
3. the summary (:func:`ocrstream.webhooks.summary`) is POSTed with httpx, signed with the
   tenant's secret (``X-Ocrstream-Signature``), with a delivery id (``X-Ocrstream-Delivery``,
   :func:`ocrstream.webhooks.delivery_id`); redirects are not followed and the answer's body is
   not read;
4. connection errors, timeouts, 5xx and 429 are retried (tenacity: exponential backoff with full
   jitter, a 429's ``Retry-After`` honoured up to the maximum wait), at most
   ``OCRSTREAM_WEBHOOK_ATTEMPTS`` calls, none started later than ``OCRSTREAM_WEBHOOK_MAX_ELAPSED_S``
   after the first; any other answer is final. Failed -> dead letter ``webhook_failed`` (the
   record, its reason, the calls made) and the stage goes on: the result itself is never
   changed. A host whose delivery failed so gets one call per delivery for
   ``OCRSTREAM_WEBHOOK_HOST_COOLDOWN_S``, so one receiver that is down holds every other
   tenant's callbacks back by one timeout per result, not by the whole retry budget;
5. then the record's offset is committed (:meth:`StageRuntime.publish`).

"Once": the offset is committed after the call, so in normal operation a result is called once
and a restart resumes after the committed offset (a compacted topic re-read by this group
calls nothing again). A crash between the call and the commit, or a commit refused because the
partition moved, calls again with the same delivery id; so do the assembler's re-published
results (at-least-once, see ``consumers/assembler.py``), which the stage itself skips while it
remembers their id (the last :data:`RECENT_DELIVERIES` delivered). Receivers de-duplicate by
``X-Ocrstream-Delivery``. ``incomplete`` results are called like any other: the complete result
that may follow is another delivery.

A delivery runs on the loop thread; it reports progress before each call and during its waits
(liveness), and the stage refuses to start with a budget over ``max.poll.interval.ms``. SIGTERM stops the retries: the record
is not committed and the next owner calls it again (same delivery id).
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections import OrderedDict
from urllib.parse import urlsplit

import httpx
import orjson
from confluent_kafka import Message, TopicPartition
from tenacity import (RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_before_delay,
                      stop_when_event_set, wait_random_exponential)

from ocrstream import metrics as m
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.preflight import ExitCode
from ocrstream.settings import Settings
from ocrstream.streaming import Output, StageRuntime, StopFlag, now_ms, run_stage
from ocrstream.streaming.loop import RecordContext
from ocrstream.webhooks import DEFAULT_PORTS, check_webhook_url, delivery_id, redact, signed_headers, summary
from schemas import DocumentResult, decode

log = logging.getLogger(__name__)

STAGE = "webhooks"
RECENT_DELIVERIES = 10_000  # delivery ids remembered to skip re-published results (32 hex chars each: ~1 MB)


class _Retry(Exception):
    """A call worth repeating: no answer (connection, timeout) or 5xx / 429."""

    def __init__(self, why: str, retry_after: float | None = None):
        super().__init__(why)
        self.retry_after = retry_after


class _Final(Exception):
    """An answer that repeating will not change (4xx but 429, a redirect)."""


class _Interrupted(BaseException):
    """SIGTERM during a delivery: leave the record uncommitted. A BaseException, so the stage
    runtime's failure policy (which turns Exceptions into dead letters) lets it through."""


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date, RFC 9110 10.2.3); None
    when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def settings_problems(s: Settings) -> list[str]:
    """Why the stage cannot run with ``s`` (empty: it can): a tenant with allowed webhook hosts
    but no secret (calls are never unsigned), or a delivery budget the consumer group or the
    liveness probe would not survive (a delivery runs on the loop thread)."""
    problems = []
    missing = [t for t in s.webhook_allowed_hosts if s.webhook_secret_of(None if t == "-" else t) is None]
    if missing:
        problems.append(f"OCRSTREAM_WEBHOOK_SECRETS has no secret for {', '.join(missing)} (every tenant in "
                        "OCRSTREAM_WEBHOOK_ALLOWED_HOSTS needs one: `tenant=secret,...`, `-=secret` for the "
                        "default tenant)")
    held = s.webhook_max_elapsed_s + s.webhook_timeout_s
    if held * 1000 >= s.max_poll_interval_ms:
        problems.append(f"OCRSTREAM_WEBHOOK_MAX_ELAPSED_S + OCRSTREAM_WEBHOOK_TIMEOUT_S ({held:.0f} s) must be under "
                        f"OCRSTREAM_MAX_POLL_INTERVAL_MS ({s.max_poll_interval_ms} ms): the group would drop the stage "
                        "mid-delivery")
    if s.webhook_timeout_s >= s.liveness_timeout_s:
        problems.append(f"OCRSTREAM_WEBHOOK_TIMEOUT_S must be under OCRSTREAM_LIVENESS_TIMEOUT_S "
                        f"({s.liveness_timeout_s:.0f} s): one slow call would fail /healthz")
    return problems


class WebhookStage:
    """The webhooks stage (see module docstring).

    Args:
        s: settings.
        stop: stop flag (default: SIGTERM/SIGINT handlers).

    Raises:
        ValueError: :func:`settings_problems` (a tenant without a secret, a budget too long).
    """

    def __init__(self, s: Settings, stop: StopFlag | None = None):
        problems = settings_problems(s)
        if problems:
            raise ValueError("; ".join(problems))
        self.s = s
        # No failed document results from here: a callback that fails does not change the result.
        self.rt = StageRuntime(s, STAGE, s.results_topics(), stop=stop, results_topic=None)
        self.stop = self.rt.stop
        # Redirects are not followed: a receiver must not bounce the call to a host that is not allowed.
        self.client = httpx.Client(timeout=s.webhook_timeout_s, follow_redirects=False)
        self.cooling: dict[tuple[str, str, int], float] = {}  # receiver -> time.monotonic() its cooldown ends
        self.delivered: OrderedDict[str, None] = OrderedDict()
        self._backoff = wait_random_exponential(multiplier=s.webhook_retry_base_s, max=s.webhook_retry_max_s)

    def run(self) -> None:
        """Consume, call, commit, until stopped.

        Raises:
            FatalKafkaError: see :mod:`ocrstream.streaming.loop`.
        """
        self.rt.start()
        try:
            while not self.stop.is_set():
                msg = self.rt.poll(0.5)
                if msg is None:
                    continue
                try:
                    outputs = self.rt.guard(msg, self.handle)
                except _Interrupted:
                    log.info("webhooks: stopped during a delivery; %s[%d]@%d is left to be called again",
                             msg.topic(), msg.partition(), msg.offset())
                    break
                self.rt.publish(outputs, [TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)])
        finally:
            self.client.close()
            self.rt.close()

    def handle(self, msg: Message, ctx: RecordContext) -> list[Output]:
        """Call back one document result; no Kafka outputs of its own.

        Raises:
            OcrstreamError: ``invalid_json``, ``schema_violation`` (the record), ``invalid_webhook_url``,
                ``webhook_not_allowed`` (its URL), ``webhook_failed`` (the receiver): each a dead letter.
            _Interrupted: stopped during the delivery.
        """
        if msg.value() is None:  # a deletion request's tombstone
            return []
        result = decode(msg.value(), DocumentResult)
        ctx.document_id = result.document_id
        if result.webhook_url is None:
            return []
        tenant = self.s.tenant_of(msg.topic())  # the topic's tenant, never the record's say
        try:
            url = check_webhook_url(self.s, result.webhook_url, tenant)
            secret = self.s.webhook_secret_of(tenant)
            if secret is None:  # a tenant removed from the settings: its topic is no longer read
                raise OcrstreamError(ReasonCode.WEBHOOK_NOT_ALLOWED, "no webhook secret for the tenant")
        except OcrstreamError:
            m.WEBHOOK_DELIVERIES.labels("refused").inc()
            raise
        age_s = (now_ms() - result.completed_at) / 1000
        if age_s > self.s.webhook_max_age_s:
            m.WEBHOOK_DELIVERIES.labels("expired").inc()
            log.warning("webhooks: %s completed %.0f s ago (over OCRSTREAM_WEBHOOK_MAX_AGE_S): not called",
                        result.document_id, age_s)
            return []
        delivery = delivery_id(msg.topic(), result)
        if delivery in self.delivered:
            log.info("webhooks: %s: delivery %s was made already (a re-published result): not called again",
                     result.document_id, delivery)
            return []
        body = orjson.dumps(summary(result, delivery, self.s.webhook_links_base))
        self.deliver(url, body, delivery, secret)
        self.delivered[delivery] = None
        if len(self.delivered) > RECENT_DELIVERIES:
            self.delivered.popitem(last=False)
        m.WEBHOOK_DELIVERIES.labels("delivered").inc()
        log.info("webhooks: %s (%s) delivered to %s (delivery %s)", result.document_id, result.status,
                 redact(url), delivery)
        return []

    def deliver(self, url: str, body: bytes, delivery: str, secret: bytes) -> None:
        """POST ``body`` to ``url`` until a 2xx answers, under the retry policy (module docstring).

        Raises:
            OcrstreamError: ``webhook_failed`` (its ``attempts``: the calls made).
            _Interrupted: stopped.
        """
        parts = urlsplit(url)
        receiver = (parts.scheme.lower(), parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme.lower()])
        cooling = self.cooling.get(receiver, 0.0) > time.monotonic()
        s = self.s
        retrying = Retrying(
            retry=retry_if_exception_type(_Retry),
            stop=(stop_after_attempt(1 if cooling else s.webhook_attempts)
                  | stop_before_delay(s.webhook_max_elapsed_s) | stop_when_event_set(self.stop.event)),
            wait=self._wait, sleep=self._sleep, before_sleep=self._before_sleep(url), reraise=True)
        started = time.monotonic()
        try:
            retrying(self._call, url, body, delivery, secret)
        except (_Retry, _Final) as exc:
            if self.stop.is_set() and isinstance(exc, _Retry):  # stopped, not given up
                raise _Interrupted() from None
            calls = retrying.statistics.get("attempt_number", 1)
            if isinstance(exc, _Retry) and s.webhook_host_cooldown_s:
                self.cooling[receiver] = time.monotonic() + s.webhook_host_cooldown_s
            m.WEBHOOK_DELIVERIES.labels("failed").inc()
            err = OcrstreamError(ReasonCode.WEBHOOK_FAILED,
                                 f"{redact(url)}: {exc} after {calls} call(s) in {time.monotonic() - started:.1f} s"
                                 + (" (receiver cooling down after an earlier failure: one call)" if cooling else ""))
            err.attempts = calls  # type: ignore[attr-defined]  # the dead letter's `attempts`
            raise err from None
        self.cooling.pop(receiver, None)

    def _call(self, url: str, body: bytes, delivery: str, secret: bytes) -> None:
        """One signed POST. Raises :class:`_Retry`, :class:`_Final` or :class:`_Interrupted`."""
        if self.stop.is_set():
            raise _Interrupted()
        self.rt.progress()  # a call within its budget is progress: liveness holds during retries
        t0 = time.perf_counter()
        try:
            # Streamed and closed unread: a receiver's answer body is never held in memory.
            with self.client.stream("POST", url, content=body, headers=signed_headers(secret, body, delivery)) as r:
                status, retry_after = r.status_code, r.headers.get("retry-after")
        except httpx.TransportError as exc:  # connect, timeouts, protocol errors
            m.WEBHOOK_CALLS.labels("transport_error").inc()
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        except httpx.InvalidURL as exc:
            m.WEBHOOK_CALLS.labels("client_error").inc()
            raise _Final(f"invalid URL ({exc})") from None
        finally:
            m.WEBHOOK_LATENCY.observe(time.perf_counter() - t0)
        if 200 <= status < 300:
            m.WEBHOOK_CALLS.labels("success").inc()
            return
        if status == 429 or status >= 500:
            m.WEBHOOK_CALLS.labels("server_error").inc()
            raise _Retry(f"HTTP {status}", retry_after_s(retry_after))
        m.WEBHOOK_CALLS.labels("client_error").inc()
        raise _Final(f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else ""))

    def _wait(self, state: RetryCallState) -> float:
        """Full-jitter backoff; at least a 429's Retry-After, at most OCRSTREAM_WEBHOOK_RETRY_MAX_S."""
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after", None)
        return backoff if asked is None else min(self.s.webhook_retry_max_s, max(backoff, asked))

    def _sleep(self, seconds: float) -> None:
        """Wait between calls in slices of at most a second, reporting progress (a backoff within
        its budget is work, not a stall: liveness); SIGTERM ends the wait."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.event.wait(min(1.0, left)):
                raise _Interrupted()
            self.rt.progress()
        if self.stop.is_set():
            raise _Interrupted()

    def _before_sleep(self, url: str):
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("webhooks: %s: %s; call %d, next in %.2f s", redact(url), exc, state.attempt_number,
                        state.upcoming_sleep)
            self.rt.progress()
        return before_sleep


def run_webhooks(s: Settings, stop: StopFlag | None = None) -> int:
    """Run the webhooks stage until SIGTERM/SIGINT (or ``stop``); returns the exit status
    (:data:`~ocrstream.preflight.ExitCode.BAD_SETTING` for :func:`settings_problems`)."""
    for problem in settings_problems(s):
        log.critical("ocrstream webhooks: %s", problem)
    if settings_problems(s):
        return ExitCode.BAD_SETTING
    return run_stage(lambda: WebhookStage(s, stop))
