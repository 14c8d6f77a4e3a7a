"""``ocrstream gateway``: an HTTP front door (FastAPI on uvicorn) for clients of FastAPI+Celery OCR servers.

    POST /v1/documents                   multipart `file` (+ optional `dpi`, `pages`, `no_cache`, `webhook_url`,
                                         `priority`, `profile`), or JSON {"bucket", "key", "dpi"?, "pages"?,
                                         "no_cache"?, "webhook_url"?, "priority"?, "profile"?}; `pages`: "1-3,7"
                                         (1-based ranges); `no_cache`: OCR even if the result cache has it;
                                         `webhook_url`: completion callback; `priority`: `interactive` | `batch`
                                         (default); `profile`: the model profile to OCR with
                                         -> 202 {"document_id"}, Location: /v1/documents/{id}
    GET  /v1/documents/{id}              {"document_id", "status": pending|succeeded|failed, ...}; 404 unknown
    GET  /v1/documents/{id}/text|hocr|alto|json   the result rendered (409 while pending)
    GET  /healthz  /readyz  /metrics  /docs  /openapi.json

A submission becomes a DocumentRef on the tenant's ingest topic (the message references object
storage, never carries the bytes), answered once the broker acknowledged it. Results come from
the tenant's compacted results topic through one background consumer per process
(:mod:`.results_table`); no request creates a consumer. The tenant is the API key's
(:mod:`.auth`); a key of one tenant cannot see another tenant's documents (404: not even
whether they exist).

Status codes: 401 no or unknown key; 403 a reference outside the tenant's allowed sources
(``forbidden_source``, nothing read), a ``webhook_url`` outside its allowed webhook hosts
(``webhook_not_allowed``, nothing stored), or a ``priority`` lane the tenant may not use
(``lane_not_allowed``, ``OCRSTREAM_TENANT_LANES``, nothing stored), or a model ``profile`` it may
not name (``profile_not_allowed``, ``OCRSTREAM_PROFILE_ROUTES``, nothing stored); 413 upload over
``OCRSTREAM_GATEWAY_MAX_UPLOAD_BYTES``; 415 neither multipart nor JSON; 422 a malformed body, an
invalid bucket/key, an object that does not exist, a malformed ``webhook_url`` (``invalid_webhook_url``),
malformed page ranges (``invalid_page_range``;
pages beyond the document's are found by the splitter: a ``failed`` result with that code); 429 +
``Retry-After`` over the tenant's quota or while the page backlog of the document's lane (an
interactive document: the interactive page topic's, not the batch backlog) and profile (one it
names; otherwise ``default``'s: an A/B split is decided by the splitter) is over
``OCRSTREAM_GATEWAY_MAX_BACKLOG_PAGES``; 503 broker or object store unavailable. Error bodies
are ``{"code": ..., "detail": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Annotated, Literal

import orjson
from confluent_kafka import KafkaException
from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.datastructures import UploadFile

from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import make_admin
from ocrstream.lanes import allowed_lane
from ocrstream.metrics import GATEWAY_DOCUMENTS, GATEWAY_REFUSED, GATEWAY_REQUESTS
from ocrstream.outputs import document_text, to_alto, to_hocr
from ocrstream.profiles import check_named_profile
from ocrstream.settings import Settings
from ocrstream.storage import ObjectStore
from ocrstream.webhooks import check_webhook_url
from schemas import DocumentResult, decode
from topology.pages import DEFAULT_PROFILE, LANES, PROFILE_NAME, check_profile_name, worker_group

from ..publish import PublishError
from .auth import ApiKeys, Unauthorized
from .intake import Intake
from .limits import PageBacklog, TenantQuota, retry_after
from .results_table import RecordFetcher, ResultsTable, ResultsTailer

log = logging.getLogger(__name__)

MULTIPART_SLACK = 64 * 1024
"""Bytes of multipart framing (boundaries, part headers, small fields) allowed on top of the
upload limit in a request body."""

DOCUMENT_ID = r"^[A-Za-z0-9._:\-]{1,200}$"  # as schemas.DocumentRef.document_id

# forbidden_source and lane_not_allowed are 403 (the caller may not make the service read there or
# put its pages first, whoever they are);
# the others name something malformed or absent: 422. Storage trouble is the service's: 503.
_STATUS_OF = {ReasonCode.FORBIDDEN_SOURCE: 403, ReasonCode.LANE_NOT_ALLOWED: 403, ReasonCode.PROFILE_NOT_ALLOWED: 403,
              ReasonCode.INVALID_KEY: 422, ReasonCode.INVALID_BUCKET: 422,
              ReasonCode.OBJECT_NOT_FOUND: 422, ReasonCode.INVALID_PAGE_RANGE: 422, ReasonCode.MESSAGE_TOO_LARGE: 413,
              ReasonCode.WEBHOOK_NOT_ALLOWED: 403, ReasonCode.INVALID_WEBHOOK_URL: 422,
              ReasonCode.STORAGE_ERROR: 503, ReasonCode.STORAGE_TIMEOUT: 503}


class ApiError(Exception):
    """An error response: ``status``, a stable ``code``, a ``detail`` line, extra ``headers``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


class _BodyTooLarge(Exception):
    pass


class SourceBody(BaseModel):
    """JSON body of ``POST /v1/documents``: an object already in the store."""

    model_config = {"extra": "forbid"}
    bucket: str = Field(min_length=1, max_length=63)
    key: str = Field(min_length=1, max_length=1024)
    dpi: int | None = Field(None, ge=36, le=600, description="PDF render DPI for this document")
    pages: str | None = Field(None, description="pages to OCR, 1-based inclusive ranges, e.g. \"1-3,7\"; "
                                                "absent = every page")
    no_cache: bool = Field(False, description="OCR it even when the result cache holds its result")
    webhook_url: str | None = Field(None, description="completion callback: a signed summary of the result is "
                                                      "POSTed here once (one of the tenant's allowed webhook hosts)")
    priority: Literal["interactive", "batch"] | None = Field(
        None, description="priority lane: `interactive` pages go before every batch page (the tenant must be "
                          "allowed the lane: OCRSTREAM_TENANT_LANES); absent = `batch`")
    profile: str | None = Field(None, pattern=PROFILE_NAME.pattern, description=(
        "model profile to OCR it with (OCRSTREAM_PROFILES; the tenant must be allowed it: "
        "OCRSTREAM_PROFILE_ROUTES); absent = the tenant's A/B split, else `default`"))


_DPI = TypeAdapter(Annotated[int, Field(ge=36, le=600)])  # the multipart `dpi` field, as SourceBody.dpi
_FLAG = TypeAdapter(bool)  # the multipart `no_cache` field: true/false, 1/0, yes/no, on/off


class Gateway:
    """The gateway's parts for one process: API keys, quota, backlog gauge, intake, and the
    results table with its tailer (started here; :attr:`tailer` ``.caught_up`` = ready).

    Raises:
        ValueError: no API keys configured.
        KafkaException: a results topic does not exist, or the broker cannot be reached.
    """

    def __init__(self, s: Settings):
        self.s = s
        self.keys = ApiKeys(s)
        self.quota = TenantQuota(s.gateway_quota_per_minute)
        self.admin = make_admin(s)
        # one backlog per model profile and priority lane, made on first use: an interactive
        # document is judged on the interactive lane's, one naming a profile on that profile's
        self._backlogs: dict[tuple[str, str], PageBacklog] = {}
        self._backlogs_lock = threading.Lock()
        self.fetcher = RecordFetcher(s)
        self.table = ResultsTable(s.gateway_results_cache_bytes, s.gateway_pending_ids, fetch=self.fetcher)
        self.tailer = ResultsTailer(s, self.keys.tenants, self.table).start()
        self.intake = Intake(s, ObjectStore(s))

    def admit(self, tenant: str | None) -> None:
        """Refuse a submission while the tenant is over its quota; otherwise take one document
        of the quota (:meth:`TenantQuota.refund` it if the submission then fails). Called before
        the body is read; the backlog of the document's lane is checked once its fields are
        (:meth:`check_backlog`).

        Raises:
            ApiError: 429 ``quota`` with Retry-After.
        """
        name = tenant or "default"
        wait = self.quota.take(tenant)
        if wait:
            GATEWAY_REFUSED.labels(name, "quota").inc()
            raise ApiError(429, "quota", f"over the quota of {self.s.gateway_quota_per_minute} documents per "
                           "minute", {"Retry-After": retry_after(wait)})

    def backlog(self, profile: str, lane: str) -> PageBacklog:
        """The page backlog of ``profile``'s ``lane`` (its page topic and worker group)."""
        with self._backlogs_lock:
            if (profile, lane) not in self._backlogs:
                self._backlogs[profile, lane] = PageBacklog(
                    self.admin, self.s.page_topic(profile, lane), self.s.group(worker_group(profile, lane)),
                    self.s.gateway_backlog_cache_s, lane=lane, profile=profile)
            return self._backlogs[profile, lane]

    def check_backlog(self, tenant: str | None, lane: str, profile: str | None = None) -> None:
        """Refuse a submission of ``lane`` while that lane's page backlog (of ``profile``; None:
        ``default``) is over ``OCRSTREAM_GATEWAY_MAX_BACKLOG_PAGES``.

        Raises:
            ApiError: 429 ``backlog`` with Retry-After; 503 the backlog cannot be measured.
        """
        if not self.s.gateway_max_backlog_pages:
            return
        try:
            pages = self.backlog(profile or DEFAULT_PROFILE, lane).pages()
        except KafkaException as exc:
            raise ApiError(503, "kafka_unavailable", f"page backlog unknown: {exc}") from None
        if pages > self.s.gateway_max_backlog_pages:
            GATEWAY_REFUSED.labels(tenant or "default", "backlog").inc()
            raise ApiError(429, "backlog", f"{pages} pages of the {lane} lane of profile "
                           f"{profile or DEFAULT_PROFILE} wait for OCR (limit "
                           f"{self.s.gateway_max_backlog_pages}); try again later",
                           {"Retry-After": retry_after(self.s.gateway_backlog_cache_s)})

    def lane(self, tenant: str | None, priority: str | None) -> str:
        """The lane of a submission asking for ``priority``.

        Raises:
            ApiError: 403 ``lane_not_allowed``.
        """
        try:
            return allowed_lane(self.s, tenant, priority)
        except OcrstreamError as exc:
            GATEWAY_REFUSED.labels(tenant or "default", "lane_not_allowed").inc()
            raise _ocr_error(exc) from None

    def profile(self, tenant: str | None, profile: str | None) -> str | None:
        """The model profile a submission names (None: none), if the tenant may name it.

        Raises:
            ApiError: 422 ``invalid_request`` (not a profile name); 403 ``profile_not_allowed``.
        """
        if profile in (None, ""):
            return None
        try:
            check_profile_name(profile)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        try:
            return check_named_profile(self.s, tenant, profile)
        except OcrstreamError as exc:
            GATEWAY_REFUSED.labels(tenant or "default", "profile_not_allowed").inc()
            raise _ocr_error(exc) from None

    def ready(self) -> dict[str, bool]:
        """``{"broker": answered a metadata request within 3 s, "results_caught_up": ...}``."""
        try:
            self.admin.list_topics(timeout=3)
            broker = True
        except KafkaException:
            broker = False
        return {"broker": broker, "results_caught_up": self.tailer.caught_up.is_set()}

    def close(self) -> None:
        """Stop the tailer, deliver queued references, close the clients."""
        self.intake.close()
        self.tailer.close()
        self.fetcher.close()
        # An AdminClient has no close(): dropping the last references destroys it (its threads and
        # connections) now, not whenever the app's reference cycles are collected.
        self.admin = None
        with self._backlogs_lock:
            for backlog in self._backlogs.values():
                backlog.admin = None


class _Guard:
    """ASGI middleware: counts every response (``ocrstream_gateway_requests_total``) and caps
    request bodies before they are parsed: a ``Content-Length`` over the cap is answered 413
    unread, a longer streamed body fails while it is read (multipart parsing would otherwise
    spool any size to disk)."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        received = [0]

        async def capped_receive():
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_body:
                    raise _BodyTooLarge()
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await _error(413, "too_large", f"request body over {self.max_body} bytes")(scope, receive,
                                                                                           counted_send)
                return
            await self.app(scope, capped_receive, counted_send)
        finally:
            route = scope.get("route")
            GATEWAY_REQUESTS.labels(getattr(route, "path", "unmatched"), str(status[0])).inc()


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status, headers=headers)


def _ocr_error(exc: OcrstreamError) -> ApiError:
    return ApiError(_STATUS_OF.get(exc.code, 500), exc.code.value, exc.message)


_UPLOAD_BODY = {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the document (PDF, PNG, JPEG, TIFF, ...)"},
        "dpi": {"type": "integer", "minimum": 36, "maximum": 600, "description": "PDF render DPI"},
        "pages": {"type": "string", "description": "pages to OCR, 1-based inclusive ranges, e.g. \"1-3,7\""},
        "no_cache": {"type": "boolean", "description": "OCR it even when the result cache holds its result"},
        "webhook_url": {"type": "string", "description": "completion callback (one of the tenant's allowed "
                                                         "webhook hosts)"},
        "priority": {"type": "string", "enum": list(LANES), "description": "priority lane (default `batch`)"},
        "profile": {"type": "string", "pattern": PROFILE_NAME.pattern, "description": "model profile to OCR with "
                                                                                     "(default: the tenant's routing)"}}}},
    "application/json": {"schema": SourceBody.model_json_schema()},
}


def create_app(s: Settings, gateway: Gateway | None = None) -> FastAPI:
    """The gateway's ASGI application. Builds a :class:`Gateway` (unless given), closed when
    the application shuts down.

    Raises:
        ValueError, KafkaException: as :class:`Gateway`.
    """
    gw = gateway or Gateway(s)
    # An upload is held in memory while it is stored (at most OCRSTREAM_GATEWAY_MAX_UPLOAD_BYTES):
    # this many at once bounds that memory; later ones wait their turn (their bodies are spooled
    # to disk by the multipart parser meanwhile).
    uploads = asyncio.Semaphore(s.gateway_max_concurrent_uploads)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(gw.close)

    app = FastAPI(title="ocrstream gateway", version="1", lifespan=lifespan,
                  description="Submit documents for OCR and read their results. Authenticate with "
                              "`Authorization: Bearer KEY` or `X-API-Key: KEY`.")
    app.state.gateway = gw
    app.add_middleware(_Guard, max_body=s.gateway_max_upload_bytes + MULTIPART_SLACK)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(_BodyTooLarge)
    async def too_large(request: Request, exc: _BodyTooLarge):
        return _error(413, "too_large", f"request body over {s.gateway_max_upload_bytes + MULTIPART_SLACK} bytes")

    def tenant_of(authorization: str | None = Header(None), x_api_key: str | None = Header(None)) -> str | None:
        try:
            return gw.keys.tenant(authorization, x_api_key)
        except Unauthorized as exc:
            raise ApiError(401, "unauthorized", str(exc), {"WWW-Authenticate": "Bearer"}) from None

    @app.post("/v1/documents", status_code=202, summary="Submit a document (upload or object reference)",
              openapi_extra={"requestBody": {"required": True, "content": _UPLOAD_BODY}},
              responses={202: {"description": "accepted: `{\"document_id\": ...}`, Location: its status"}})
    async def submit(request: Request, tenant: str | None = Depends(tenant_of)) -> JSONResponse:
        # The quota before the body is read: a refused client costs no upload. The backlog of the
        # document's lane once its fields are parsed, before anything is stored (_submit).
        await run_in_threadpool(gw.admit, tenant)
        try:
            document_id, kind = await _submit(request, tenant)
        except BaseException:
            gw.quota.refund(tenant)
            raise
        gw.table.accept((tenant, document_id))
        GATEWAY_DOCUMENTS.labels(tenant or "default", kind).inc()
        return JSONResponse({"document_id": document_id}, status_code=202,
                            headers={"Location": f"/v1/documents/{document_id}"})

    async def _submit(request: Request, tenant: str | None) -> tuple[str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if ctype == "multipart/form-data":
                async with request.form(max_files=1, max_fields=9) as form:
                    file, dpi, pages = form.get("file"), form.get("dpi"), form.get("pages")
                    no_cache = form.get("no_cache")
                    webhook_url = form.get("webhook_url")
                    priority = form.get("priority")
                    profile = form.get("profile")
                    if not isinstance(file, UploadFile):
                        raise ApiError(422, "invalid_request", "multipart body without a `file` part")
                    if file.size is not None and file.size > s.gateway_max_upload_bytes:
                        raise _upload_too_large(tenant)
                    try:
                        dpi_value = None if dpi in (None, "") else _DPI.validate_python(dpi)
                    except ValidationError:
                        raise ApiError(422, "invalid_request", "dpi must be an integer 36..600") from None
                    if pages is not None and not isinstance(pages, str):
                        raise ApiError(422, "invalid_request", "pages must be a form field, not a file")
                    try:
                        no_cache_value = no_cache not in (None, "") and _FLAG.validate_python(no_cache)
                    except ValidationError:
                        raise ApiError(422, "invalid_request", "no_cache must be true or false") from None
                    if webhook_url is not None and not isinstance(webhook_url, str):
                        raise ApiError(422, "invalid_request", "webhook_url must be a form field, not a file")
                    if webhook_url is not None:  # refused before the upload is read or stored
                        check_webhook_url(s, webhook_url, tenant)
                    if priority in ("", None):
                        priority = None
                    elif priority not in LANES:
                        raise ApiError(422, "invalid_request", f"priority must be one of {', '.join(LANES)}")
                    if profile is not None and not isinstance(profile, str):
                        raise ApiError(422, "invalid_request", "profile must be a form field, not a file")
                    lane = gw.lane(tenant, priority)  # before anything is stored
                    profile = gw.profile(tenant, profile)
                    await run_in_threadpool(gw.check_backlog, tenant, lane, profile)
                    async with uploads:
                        data = await file.read(s.gateway_max_upload_bytes + 1)
                        if len(data) > s.gateway_max_upload_bytes:
                            raise _upload_too_large(tenant)
                        return await run_in_threadpool(
                            gw.intake.upload, tenant, file.filename, data, dpi_value, pages=pages,
                            no_cache=no_cache_value, webhook_url=webhook_url, priority=priority,
                            profile=profile), "upload"
            if ctype == "application/json":
                try:
                    body = SourceBody.model_validate_json(await request.body())
                except ValidationError as exc:
                    raise ApiError(422, "invalid_request", "; ".join(
                        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())) from None
                lane = gw.lane(tenant, body.priority)
                profile = gw.profile(tenant, body.profile)
                await run_in_threadpool(gw.check_backlog, tenant, lane, profile)
                return await run_in_threadpool(
                    gw.intake.reference, tenant, body.bucket, body.key, body.dpi, pages=body.pages,
                    no_cache=body.no_cache, webhook_url=body.webhook_url, priority=body.priority,
                    profile=profile), "reference"
        except OcrstreamError as exc:
            if exc.code in (ReasonCode.FORBIDDEN_SOURCE, ReasonCode.WEBHOOK_NOT_ALLOWED):
                GATEWAY_REFUSED.labels(tenant or "default", exc.code.value).inc()
            raise _ocr_error(exc) from None
        except PublishError as exc:
            raise ApiError(503, "kafka_unavailable", str(exc)) from None
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with a `file` part, or "
                       "application/json {\"bucket\": ..., \"key\": ...}")

    def _upload_too_large(tenant: str | None) -> ApiError:
        GATEWAY_REFUSED.labels(tenant or "default", "too_large").inc()
        return ApiError(413, "too_large", f"upload over {s.gateway_max_upload_bytes} bytes")

    def lookup(tenant: str | None, document_id: str) -> DocumentResult | None:
        """The result of the tenant's document, None while pending; ApiError 404 when unknown."""
        try:
            value = gw.table.get((tenant, document_id))
        except KafkaException as exc:
            raise ApiError(503, "kafka_unavailable", f"result not readable now: {exc}") from None
        if value is None:
            raise ApiError(404, "not_found", f"no document {document_id}")
        if value == "pending":
            return None
        try:
            return decode(value, DocumentResult)
        except OcrstreamError as exc:  # the tailer checked its shape; a full validation failed
            raise ApiError(502, "invalid_result", exc.message) from None

    doc_id_path = Path(pattern=DOCUMENT_ID, description="the id `POST /v1/documents` returned")

    @app.get("/v1/documents/{document_id}", summary="A document's status and result")
    def status(document_id: str = doc_id_path, tenant: str | None = Depends(tenant_of)) -> JSONResponse:
        result = lookup(tenant, document_id)
        if result is None:
            return JSONResponse({"document_id": document_id, "status": "pending"})
        return JSONResponse({"document_id": document_id, "status": result.status, "page_count": result.page_count,
                             "error": result.error.model_dump(mode="json") if result.error else None,
                             "result": result.model_dump(mode="json", by_alias=True)})

    def rendered(document_id: str, tenant: str | None, render, media_type: str) -> Response:
        result = lookup(tenant, document_id)
        if result is None:
            raise ApiError(409, "pending", f"document {document_id} has no result yet")
        return Response(render(result), media_type=media_type)

    @app.get("/v1/documents/{document_id}/text", summary="Text: lines in reading order, pages separated by \\f",
             response_class=Response)
    def text(document_id: str = doc_id_path, tenant: str | None = Depends(tenant_of)) -> Response:
        return rendered(document_id, tenant, document_text, "text/plain; charset=utf-8")

    @app.get("/v1/documents/{document_id}/hocr", summary="hOCR 1.2 (XHTML)", response_class=Response)
    def hocr(document_id: str = doc_id_path, tenant: str | None = Depends(tenant_of)) -> Response:
        return rendered(document_id, tenant, to_hocr, "application/xhtml+xml; charset=utf-8")

    @app.get("/v1/documents/{document_id}/alto", summary="ALTO XML 4.4", response_class=Response)
    def alto(document_id: str = doc_id_path, tenant: str | None = Depends(tenant_of)) -> Response:
        return rendered(document_id, tenant, to_alto, "application/xml; charset=utf-8")

    @app.get("/v1/documents/{document_id}/json", summary="The document result as on the results topic",
             response_class=Response)
    def result_json(document_id: str = doc_id_path, tenant: str | None = Depends(tenant_of)) -> Response:
        return rendered(document_id, tenant, lambda r: orjson.dumps(r.model_dump(mode="json", by_alias=True)),
                        "application/json")

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:  # on the event loop: a thread pool full of slow submissions must not fail liveness
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: broker reachable, results table caught up")
    def readyz() -> JSONResponse:
        checks = gw.ready()
        return JSONResponse(checks, status_code=200 if all(checks.values()) else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(s: Settings) -> int:
    """Run the gateway on ``OCRSTREAM_GATEWAY_HOST:OCRSTREAM_GATEWAY_PORT`` until SIGTERM/SIGINT
    (uvicorn's graceful shutdown: open requests finish, then the lifespan closes the clients).

    Returns:
        0 after a graceful stop.

    Raises:
        ValueError, KafkaException: as :class:`Gateway`.
    """
    import signal

    import uvicorn

    app = create_app(s)
    server = uvicorn.Server(uvicorn.Config(app, host=s.gateway_host, port=s.gateway_port,
                                           log_level=s.log_level.lower(), access_log=s.log_level.upper() == "DEBUG"))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again under the
    # handlers it found; these make that a no-op, so the command exits 0 like the stages do.
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopped.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("gateway stopped (%s)", ", ".join(signal.Signals(n).name for n in stopped) or "no signal")
    return 0
