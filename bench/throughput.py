"""Throughput, framework ceiling, latency, memory and scaling benchmarks (not tests).

    python bench/throughput.py ratio    [--pages 14] [--rounds 2]
    python bench/throughput.py ceiling  [--pages 60]
    python bench/throughput.py loop     [--pages 8]      (the engine alone; time it with farm-bench)
    python bench/throughput.py latency  [--docs 20] [--interval 4]
    python bench/throughput.py overhead [--pages 12] [--workers 4]
    python bench/throughput.py memory   [--pages 1000]
    python bench/throughput.py scaling  [--pages 24] [--counts 1,2,4]

Common options: ``--scans DIR`` (PDFs to take pages from). GPU hosts: set
``OCRSTREAM_ENGINE_DEVICE=cuda:0`` (and the batch settings in the README); the
ratio benchmark then also reports NVML GPU utilisation for both sides.

Each prints a JSON summary on stdout and writes ``bench/out/<name>.json`` and
``bench/out/<name>.png``. Pages are the scanned court filings in
``../shared/data/scans-dev`` (first PDFs until ``--pages`` is reached), or the
generated samples when that folder is absent.

The pipeline runs on its own local stack (``.ocrstream-bench``: Kafka on 39092,
S3 on 39433) with every stage as a separate process, exactly as deployed; it is
timed from the first publish to the last document result, after a warm-up
document has gone through every worker. The baseline is what a user would
otherwise write: a plain loop that renders each page with PyMuPDF and calls
the same engine on it, one page at a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.stack import Stack  # noqa: E402
from devtools.textmetrics import word_prf  # noqa: E402
from ocrstream.documents import decode_image_page, inspect, open_pdf, render_pdf_page  # noqa: E402
from ocrstream.engine import create_engine  # noqa: E402
from ocrstream.kafka import make_admin  # noqa: E402
from ocrstream.settings import Settings  # noqa: E402
from topology import apply_topics, topic_specs  # noqa: E402

OUT = REPO / "bench" / "out"
SCANS = REPO.parent / "shared" / "data" / "scans-dev"


def bench_settings(**kw) -> Settings:
    base = dict(kafka_bootstrap_servers="127.0.0.1:39092", kafka_port=39092, kafka_controller_port=39093,
                s3_endpoint="127.0.0.1:39433", s3_port=39433, stack_port_base=41000,
                stack_dir=REPO / ".ocrstream-bench", kafka_libs=REPO / "deploy" / "kafka" / "libs",
                s3_access_key="ocrstream", s3_secret_key="ocrstream-secret",
                # OCR figures: born-digital pages must not take the text-layer fast path here, nor
                # repeated documents the result cache.
                text_layer="off", result_cache_ttl_h=0.0)
    base.update(kw)
    return Settings(**base)


class GpuMonitor:
    """Samples NVML (GPU utilisation %, memory used) every ``period_s`` in a thread while
    a ``with`` block runs; :meth:`summary` is None on a host without NVIDIA GPUs. NVML's
    utilisation is the share of time a kernel was running over its own ~1/6-1 s window."""

    def __init__(self, period_s: float = 0.5):
        import threading

        from ocrstream.metrics import GpuSampler

        self.sampler, self.period_s = GpuSampler(), period_s
        self.samples: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.samples.append(self.sampler.sample())

    def __enter__(self) -> "GpuMonitor":
        if self.sampler.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict | None:
        rows = [s[0] for s in self.samples if s]
        utils = [r.utilization_pct for r in rows if r.utilization_pct is not None]
        mem = [r.memory_used_bytes for r in rows if r.memory_used_bytes is not None]
        if not rows:
            return None
        return {"gpu": rows[0].name, "samples": len(rows),
                "utilization_pct_mean": round(statistics.fmean(utils), 1) if utils else None,
                "utilization_pct_p90": round(sorted(utils)[int(0.9 * (len(utils) - 1))], 1) if utils else None,
                "memory_used_gib_max": round(max(mem) / 2**30, 2) if mem else None}


def pick_documents(n_pages: int, tmp: Path) -> list[Path]:
    """Whole documents adding up to at least ``n_pages`` pages."""
    if SCANS.is_dir():
        candidates = sorted(SCANS.glob("*.pdf"))
    else:
        from devtools.samples import make_samples

        candidates = make_samples(tmp / "samples") * 20
    docs, pages = [], 0
    for i, p in enumerate(candidates):
        if pages >= n_pages:
            break
        data = p.read_bytes()
        info = inspect(data, p.name, max_pages=10_000, max_page_pixels=10**9)
        if p in docs:  # generated samples repeat: give each copy its own name
            p = tmp / f"{i}-{p.name}"
            p.write_bytes(data)
        docs.append(p)
        pages += info.page_count
    return docs


def render_all(path: Path, s: Settings):
    data = path.read_bytes()
    info = inspect(data, path.name, max_pages=s.max_pages, max_page_pixels=s.max_page_pixels)
    if info.kind == "pdf":
        doc = open_pdf(data)
        for n in range(1, info.page_count + 1):
            yield render_pdf_page(doc, n, s.render_dpi, s.max_page_pixels)
    else:
        for n in range(1, info.page_count + 1):
            yield decode_image_page(data, n, s.max_page_pixels)


def plain_loop(docs: list[Path], s: Settings, ocr: bool = True) -> dict:
    """Render + OCR one page at a time (or only render, ``ocr=False``)."""
    engine = create_engine(s) if ocr else None
    if engine is not None:  # warm-up, as the pipeline gets one
        engine.ocr_batch([next(render_all(docs[0], s))])
    texts: dict[str, list[str]] = {}
    pages = 0
    det_ms = rec_ms = 0.0
    t0 = time.perf_counter()
    for d in docs:
        texts[d.name] = []
        for img in render_all(d, s):
            pages += 1
            if engine is not None:
                (res,) = engine.ocr_batch([img])
                texts[d.name].append("\n".join(line.text for line in res.lines))
                det_ms += res.timings_ms.get("det_ms", 0.0)
                rec_ms += res.timings_ms.get("rec_ms", 0.0)
    elapsed = time.perf_counter() - t0
    return {"pages": pages, "seconds": round(elapsed, 2), "pages_per_s": round(pages / elapsed, 3),
            "det_ms_per_page": round(det_ms / max(1, pages)), "rec_ms_per_page": round(rec_ms / max(1, pages)),
            "texts": texts}


def stage_env(s: Settings) -> dict[str, str]:
    """Environment of a stage process equal to ``s`` (``OCRSTREAM_*`` of the caller replaced).
    Tenants (a dict) are written as JSON, as pydantic-settings reads them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCRSTREAM_")}
    for name, value in s.model_dump().items():
        if value is not None:
            value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            env[f"OCRSTREAM_{name.upper()}"] = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
    return env


def timed_run(s: Settings, docs: list[Path], timeout_s: float = 3600, gpu_monitor: "GpuMonitor | None" = None) -> dict:
    """Upload ``docs`` (not timed: storage writes are not what is measured), then time from the
    first publish to the last document result on a running pipeline with settings ``s``."""
    from ocrstream.documents import content_type_for
    from producers.publish import DocumentPublisher
    from producers.results import ResultFollower

    follower = ResultFollower(s)
    with DocumentPublisher(s) as pub:
        refs = []
        for d in docs:
            key = f"{s.upload_prefix}bench/{uuid.uuid4().hex}/{d.name}"  # inside the allowed sources
            pub.store.put_bytes(key, d.read_bytes(), content_type_for(d.name))
            refs.append((key, d.name))
    if gpu_monitor is not None:
        gpu_monitor.samples.clear()  # measure the timed part only, not the warm-up
    t0 = time.perf_counter()
    with DocumentPublisher(s) as pub:
        ids = {pub.publish_object(s.bucket, key, filename=name): name for key, name in refs}
    results = follower.wait_for(ids, timeout_s=timeout_s)
    elapsed = time.perf_counter() - t0
    follower.close()
    pages = sum(r.page_count for r in results.values())
    texts = {ids[d]: ["\n".join(det.text for det in p.detections) for p in r.pages] for d, r in results.items()}
    return {"pages": pages, "seconds": round(elapsed, 2), "pages_per_s": round(pages / elapsed, 3),
            "failed_documents": sum(r.status != "succeeded" for r in results.values()), "texts": texts}


class Pipeline:
    """Every stage as a subprocess against the bench stack, with fresh topics."""

    def __init__(self, s: Settings, workers: int, log_dir: Path):
        tag = uuid.uuid4().hex[:6]
        self.s = s.model_copy(update={"topic_prefix": f"b{tag}.", "group_prefix": f"b{tag}.", "bucket": f"bench-{tag}"})
        Stack(self.s).up()
        apply_topics(make_admin(self.s), topic_specs(), self.s.topic_prefix)
        from ocrstream.storage import ObjectStore

        ObjectStore(self.s).ensure_bucket()
        self.procs: list[subprocess.Popen] = []
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        for stage in ["splitter", "assembler"] + ["worker"] * workers:
            self.procs.append(self._start(stage, len(self.procs)))

    def _start(self, stage: str, i: int) -> subprocess.Popen:
        env = stage_env(self.s)
        env["OCRSTREAM_WORKER_ID"] = f"{stage}-{i}"
        log = open(self.log_dir / f"{stage}-{i}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "ocrstream.cli", stage], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO)

    def run(self, docs: list[Path], timeout_s: float = 3600, gpu_monitor: "GpuMonitor | None" = None) -> dict:
        from producers.publish import DocumentPublisher
        from producers.results import ResultFollower

        # warm-up: one document per worker so engines are loaded and partitions assigned
        follower = ResultFollower(self.s)
        with DocumentPublisher(self.s) as pub:
            warm = [pub.upload_and_publish(docs[0]) for _ in range(max(1, len(self.procs) - 2))]
        follower.wait_for(warm, timeout_s=600)
        follower.close()
        return timed_run(self.s, docs, timeout_s, gpu_monitor)

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def agreement(a: dict[str, list[str]], b: dict[str, list[str]]) -> float:
    """Micro word F1 of texts ``a`` against texts ``b`` (same documents and pages)."""
    pa = "\n".join("\n".join(a[k]) for k in sorted(a))
    pb = "\n".join("\n".join(b.get(k, [])) for k in sorted(a))
    return round(word_prf(pa, pb)[2], 4)


def chart(name: str, labels: list[str], values: list[float], ylabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(labels, values, color=["#888888"] + ["#2a7ab9"] * (len(values) - 1))
    ax.bar_label(bars, fmt="%.2f")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def emit(name: str, summary: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


def hardware() -> dict:
    import platform

    from ocrstream.metrics import GpuSampler

    gpus = GpuSampler().sample()
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "gpus": [g.name for g in gpus] if gpus else []}


# --- ratio: the pipeline against the loops a user would write ---------------------------------
_LOOP: dict = {}  # per loop process: the engine and the open documents


def _loop_init(kind: str, threads: int, settings_json: bytes) -> None:
    """Process initializer of a plain loop: build the engine once (not timed) and warm it up."""
    s = Settings.model_validate_json(settings_json)
    if kind == "rapidocr":  # what a user writes: RapidOCR's defaults, nothing tuned
        from rapidocr import RapidOCR

        ocr = RapidOCR(params={"Global.log_level": "warning"})
        _LOOP["ocr"] = lambda img: "\n".join(ocr(img).txts or ())
    else:  # the pipeline's own engine and settings, in a plain loop
        engine = create_engine(s.model_copy(update={"engine_threads": threads}))
        _LOOP["ocr"] = lambda img: "\n".join(line.text for line in engine.ocr_batch([img])[0].lines)
    _LOOP["s"], _LOOP["docs"] = s, {}
    import numpy as np

    _LOOP["ocr"](np.full((200, 600, 3), 255, np.uint8))


def _loop_page(task: tuple[str, int]) -> tuple[str, int, str]:
    """Render page ``n`` of ``path`` (PyMuPDF, the pipeline's DPI) and OCR it."""
    path, n = task
    s = _LOOP["s"]
    doc = _LOOP["docs"].get(path)
    if doc is None:
        doc = _LOOP["docs"][path] = open_pdf(Path(path).read_bytes())
    return Path(path).name, n, _LOOP["ocr"](render_pdf_page(doc, n, s.render_dpi, s.max_page_pixels))


def _ready(_: int) -> int:
    time.sleep(0.5)  # keeps this process busy so that every process of the pool gets one
    return os.getpid()


def plain_loops(kind: str, procs: int, threads: int, docs: list[Path], s: Settings) -> dict:
    """A plain loop over every page of ``docs`` in ``procs`` processes of ``threads`` inference
    threads each (pages handed out one at a time); timed from the first page to the last, after
    every process built and warmed up its engine."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    tasks = [(str(d), n) for d in docs
             for n in range(1, inspect(d.read_bytes(), d.name, max_pages=10_000, max_page_pixels=10**9).page_count + 1)]
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"), initializer=_loop_init,
                             initargs=(kind, threads, s.model_dump_json().encode())) as pool:
        pids: set[int] = set()
        for _ in range(120):  # bounded: a process takes tasks only once its engine is built and warm
            pids |= set(pool.map(_ready, range(2 * procs)))
            if len(pids) == procs:
                break
        assert len(pids) == procs, f"{procs - len(pids)} loop process(es) did not start"
        t0 = time.perf_counter()
        out = list(pool.map(_loop_page, tasks))
        elapsed = time.perf_counter() - t0
    texts: dict[str, list[str]] = {}
    for name, _, text in sorted(out):
        texts.setdefault(name, []).append(text)
    return {"pages": len(tasks), "seconds": round(elapsed, 2), "pages_per_s": round(len(tasks) / elapsed, 3),
            "texts": texts}


class RunPipeline:
    """``ocrstream run --no-watch`` with its defaults (workers and threads chosen from the host)
    against the bench stack, kept running between rounds."""

    def __init__(self, s: Settings, log_dir: Path):
        from ocrstream.cli import default_workers

        tag = uuid.uuid4().hex[:6]
        self.s = s.model_copy(update={"topic_prefix": f"b{tag}.", "group_prefix": f"b{tag}.", "bucket": f"bench-{tag}"})
        Stack(self.s).up()
        apply_topics(make_admin(self.s), topic_specs(), self.s.topic_prefix)
        from ocrstream.storage import ObjectStore

        ObjectStore(self.s).ensure_bucket()
        self.workers = default_workers(os.cpu_count() or 1)
        env = stage_env(self.s)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "ocrstream.cli", "run", "--no-watch"], env=env,
                                     stdout=open(log_dir / "run.log", "wb"), stderr=subprocess.STDOUT, cwd=REPO)

    def run(self, docs: list[Path], timeout_s: float = 3600) -> dict:
        return timed_run(self.s, docs, timeout_s)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cmd_ratio(args) -> None:
    """Pipeline (``ocrstream run`` defaults) vs the plain ``RapidOCR()`` default loop vs the best
    plain loop of the pipeline's own engine (1 process x all cores, or 1 process per core x 1
    thread: whichever is faster here), alternating A B C D per round so that drift of the
    machine's speed cancels out in the per-round ratios."""
    s = bench_settings()
    cores = os.cpu_count() or 1
    tmp = REPO / ".ocrstream-bench" / "docs"
    tmp.mkdir(parents=True, exist_ok=True)
    docs = pick_documents(args.pages, tmp)
    pipe = RunPipeline(s, REPO / ".ocrstream-bench" / "logs")
    variants = {
        "pipeline": lambda: pipe.run(docs),
        "rapidocr_default_loop": lambda: plain_loops("rapidocr", 1, 0, docs, s),
        "engine_loop_1proc": lambda: plain_loops("engine", 1, cores, docs, s),
        f"engine_loop_{cores}procs": lambda: plain_loops("engine", cores, 1, docs, s),
    }
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    try:
        pipe.run(docs[:1] * pipe.workers)  # warm-up: engines loaded, partitions assigned
        for r in range(args.rounds):
            for name, fn in variants.items():
                res = fn()
                runs[name].append(res)
                print(f"round {r + 1}: {name:24} {res['pages_per_s']:.3f} pages/s", file=sys.stderr)
    finally:
        pipe.close()
    median = {k: statistics.median(x["pages_per_s"] for x in v) for k, v in runs.items()}
    loops = [k for k in runs if k.startswith("engine_loop")]
    best = max(loops, key=lambda k: median[k])

    def per_round(a: str, b: str) -> list[float]:
        return [round(x["pages_per_s"] / y["pages_per_s"], 3) for x, y in zip(runs[a], runs[b])]

    vs_default, vs_best = per_round("pipeline", "rapidocr_default_loop"), per_round("pipeline", best)
    last = {k: v[-1]["texts"] for k, v in runs.items()}
    summary = {
        "benchmark": "throughput ratio: `ocrstream run` defaults vs plain loops, paired rounds",
        "engine": create_engine(s).info.model_dump(), "dpi": s.render_dpi, "documents": len(docs),
        "pages": runs["pipeline"][0]["pages"], "rounds": args.rounds, "pipeline_workers": pipe.workers,
        "pages_per_s_median": median, "pages_per_s_runs": {k: [x["pages_per_s"] for x in v] for k, v in runs.items()},
        "best_plain_loop": best,
        "ratio_vs_rapidocr_default_loop": statistics.median(vs_default), "ratio_vs_rapidocr_default_loop_rounds": vs_default,
        "ratio_vs_best_plain_loop": statistics.median(vs_best), "ratio_vs_best_plain_loop_rounds": vs_best,
        "word_f1_pipeline_vs_rapidocr_default_loop": agreement(last["pipeline"], last["rapidocr_default_loop"]),
        "word_f1_pipeline_vs_best_plain_loop": agreement(last["pipeline"], last[best]),
        "failed_documents": sum(x.get("failed_documents", 0) for x in runs["pipeline"]),
        "hardware": hardware(),
    }
    chart("ratio", ["RapidOCR() loop", f"best loop ({best.removeprefix('engine_loop_')})",
                    f"pipeline ({pipe.workers} workers)"],
          [median["rapidocr_default_loop"], median[best], median["pipeline"]], "pages/s",
          f"{summary['ratio_vs_rapidocr_default_loop']}x RapidOCR() loop, {summary['ratio_vs_best_plain_loop']}x best loop")
    emit("ratio", summary)


def cmd_loop(args) -> None:
    """The pipeline's engine in a plain one-process loop over the first ``--pages`` scanned pages
    (engine and settings from the environment): for timing runtimes against each other with
    ``farm-bench ... --vs ...``."""
    s = bench_settings()
    tmp = REPO / ".ocrstream-bench" / "docs"
    tmp.mkdir(parents=True, exist_ok=True)
    res = plain_loop(pick_documents(args.pages, tmp), s)
    print(orjson.dumps({"engine": create_engine(s).info.model_dump(), **{k: v for k, v in res.items() if k != "texts"}}).decode())


def cmd_ceiling(args) -> None:
    s = bench_settings()
    tmp = REPO / ".ocrstream-bench" / "docs"
    tmp.mkdir(parents=True, exist_ok=True)
    docs = pick_documents(args.pages, tmp)
    bare = plain_loop(docs, s, ocr=False)
    pipe = Pipeline(bench_settings(engine="none", batch_max_pages=32, batch_max_wait_ms=args.wait_ms, max_inflight_pages=64),
                    args.workers, REPO / ".ocrstream-bench" / "logs")
    try:
        res = pipe.run(docs)
    finally:
        pipe.close()
    summary = {"benchmark": "framework ceiling: pipeline with engine=none (measurement mode) vs bare PyMuPDF rendering",
               "bare_render": {k: v for k, v in bare.items() if k != "texts"},
               "pipeline_no_ocr": {k: v for k, v in res.items() if k != "texts"} | {"workers": args.workers},
               "ratio": round(res["pages_per_s"] / bare["pages_per_s"], 3), "hardware": hardware()}
    chart("ceiling", ["bare render", "pipeline, no OCR"], [bare["pages_per_s"], res["pages_per_s"]], "pages/s",
          f"Framework ceiling {summary['ratio']}x")
    emit("ceiling", summary)


def big_scan(pages: int, tmp: Path) -> Path:
    """A large scanned PDF: ``pages`` A4 pages, each one 300-DPI RGB image of text on noisy paper
    stored losslessly (PNG/Flate), about 15 MB a page. Cached in ``tmp``."""
    import numpy as np
    import pymupdf

    path = tmp / f"big-scan-{pages}.pdf"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    out = pymupdf.open()
    for n in range(pages):
        src = pymupdf.open()
        pg = src.new_page(width=595, height=842)
        for i in range(40):
            pg.insert_text((50, 60 + 19 * i), f"Page {n + 1} line {i + 1}: the quick brown fox 0123456789", fontsize=11)
        pix = pg.get_pixmap(dpi=300)
        img = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, pix.n).astype(np.int16)
        img = np.clip(img - 30 + rng.integers(0, 60, img.shape), 0, 255).astype(np.uint8)  # paper grain
        png = pymupdf.Pixmap(pymupdf.csRGB, pix.width, pix.height, img.tobytes(), False).tobytes("png")
        page = out.new_page(width=595, height=842)
        page.insert_image(page.rect, stream=png)
    out.save(path)
    return path


def cmd_overhead(args) -> None:
    """Cost of every worker downloading the whole document: one large scanned PDF, ``--workers``
    workers without OCR (``engine=none``, so what is left is download, parse and render), page
    slices off vs on, alternating."""
    from confluent_kafka import Consumer

    from ocrstream.kafka import assign_all, consumer_config, read_to_end
    from schemas import PageResult, decode

    tmp = REPO / ".ocrstream-bench" / "docs"
    tmp.mkdir(parents=True, exist_ok=True)
    big = big_scan(args.pages, tmp)
    size = big.stat().st_size
    rows = []
    for r in range(args.rounds):
        for label, min_bytes in (("whole document per worker", 0), ("page slices", 1)):
            pipe = Pipeline(bench_settings(engine="none", slice_min_bytes=min_bytes, max_object_bytes=2**31),
                            args.workers, REPO / ".ocrstream-bench" / "logs")
            try:
                res = pipe.run([big] * args.docs)
                c = Consumer(consumer_config(pipe.s, f"bench-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": True}))
                per_doc_workers: dict[str, set] = {}
                for m in read_to_end(c, assign_all(c, pipe.s.topic("page-results"), "beginning")):
                    pr = decode(m.value(), PageResult)
                    per_doc_workers.setdefault(pr.document_id, set()).add(pr.worker_id)
                c.close()
                from ocrstream.storage import ObjectStore

                sliced = sum(o.size for o in ObjectStore(pipe.s).list(pipe.s.slice_prefix))
            finally:
                pipe.close()
            timed = [d for d in per_doc_workers if d in res["texts"]] or list(per_doc_workers)
            downloads = size * len(timed) + (sliced if min_bytes else size * sum(len(per_doc_workers[d]) for d in timed))
            rows.append({"round": r + 1, "mode": label, "pages": res["pages"], "seconds": res["seconds"],
                         "pages_per_s": res["pages_per_s"], "failed_documents": res["failed_documents"],
                         "mb_downloaded_per_document": round(downloads / len(timed) / 1e6, 1)})
            print(rows[-1], file=sys.stderr)
    by = {m: statistics.median(x["pages_per_s"] for x in rows if x["mode"] == m) for m in {x["mode"] for x in rows}}
    summary = {"benchmark": "framework overhead of large documents: whole-document downloads vs page slices",
               "document_mb": round(size / 1e6, 1), "document_pages": args.pages, "documents": args.docs,
               "workers": args.workers, "engine": "none", "runs": rows, "pages_per_s_median": by,
               "speedup_with_slices": round(by["page slices"] / by["whole document per worker"], 3),
               "hardware": hardware()}
    emit("overhead", summary)


def cmd_latency(args) -> None:
    from producers.publish import DocumentPublisher
    from producers.results import ResultFollower
    from devtools.samples import make_samples

    tmp = REPO / ".ocrstream-bench" / "docs"
    doc = [d for d in make_samples(tmp / "samples") if d.suffix == ".jpg"][0]
    s = bench_settings()
    engine = create_engine(s)
    img = next(render_all(doc, s))
    engine.ocr_batch([img])
    t = time.perf_counter()
    for _ in range(3):
        engine.ocr_batch([img])
    engine_ms = (time.perf_counter() - t) / 3 * 1000
    del engine
    pipe = Pipeline(bench_settings(batch_max_wait_ms=20), 1, REPO / ".ocrstream-bench" / "logs")
    lat = []
    try:
        pipe.run([doc])
        follower = ResultFollower(pipe.s)
        for _ in range(args.docs):
            t0 = time.time()
            with DocumentPublisher(pipe.s) as pub:
                key = f"{pipe.s.upload_prefix}lat/{uuid.uuid4().hex}/{doc.name}"
                pub.store.put_bytes(key, doc.read_bytes(), "image/jpeg")
                t0 = time.time()
                doc_id = pub.publish_object(pipe.s.bucket, key)
            r = follower.wait_for([doc_id], timeout_s=300)[doc_id]
            lat.append(r.completed_at - int(t0 * 1000))
            time.sleep(max(0.0, args.interval - (time.time() - t0)))
        follower.close()
    finally:
        pipe.close()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    summary = {"benchmark": "submit-to-document-result latency, one-page documents at a steady low rate",
               "documents": len(lat), "interval_s": args.interval, "engine_ms_per_page": round(engine_ms, 1),
               "p50_ms": statistics.median(lat), "p99_ms": p99, "overhead_p99_ms": round(p99 - engine_ms, 1),
               "target": "p99 <= engine time + 300 ms", "hardware": hardware()}
    chart("latency", ["engine only", "p50", "p99"], [engine_ms, summary["p50_ms"], p99], "ms", "Latency")
    emit("latency", summary)


def cmd_scaling(args) -> None:
    tmp = REPO / ".ocrstream-bench" / "docs"
    tmp.mkdir(parents=True, exist_ok=True)
    docs = pick_documents(args.pages, tmp)
    rows = []
    for n in [int(x) for x in args.counts.split(",")]:
        pipe = Pipeline(bench_settings(engine_threads=max(1, (os.cpu_count() or 2) // n)), n,
                        REPO / ".ocrstream-bench" / "logs")
        try:
            res = pipe.run(docs)
        finally:
            pipe.close()
        rows.append({"workers": n, "pages": res["pages"], "pages_per_s": res["pages_per_s"], "seconds": res["seconds"]})
    summary = {"benchmark": "scaling: pages/s by workers in the group", "runs": rows, "hardware": hardware(),
               "note": f"{os.cpu_count()} cores: workers beyond the core count compete for the same CPUs"}
    chart("scaling", [f"{r['workers']} worker(s)" for r in rows], [r["pages_per_s"] for r in rows], "pages/s", "Scaling")
    emit("scaling", summary)


def cmd_memory(args) -> None:
    import psutil

    from producers.publish import DocumentPublisher
    from producers.results import ResultFollower

    tmp = REPO / ".ocrstream-bench" / "docs"
    tmp.mkdir(parents=True, exist_ok=True)
    docs = pick_documents(args.pages, tmp)
    pipe = Pipeline(bench_settings(engine=args.engine), 1, REPO / ".ocrstream-bench" / "logs")
    worker = psutil.Process(pipe.procs[-1].pid)
    samples = []
    try:
        pipe.run(docs[:1])
        follower = ResultFollower(pipe.s)
        ids = []
        done = 0
        with DocumentPublisher(pipe.s) as pub:
            while done < args.pages:
                for d in docs:
                    ids.append(pub.upload_and_publish(d))
                    done += inspect(d.read_bytes(), d.name, max_pages=10_000, max_page_pixels=10**9).page_count
                    if done >= args.pages:
                        break
        got: dict = {}
        t0 = time.monotonic()
        while len(got) < len(ids) and time.monotonic() - t0 < 7200:
            try:
                got.update(follower.wait_for([i for i in ids if i not in got], timeout_s=5))
            except TimeoutError as exc:
                got.update(exc.results)
            pages_done = sum(r.page_count for r in got.values())
            samples.append((pages_done, worker.memory_info().rss))
        follower.close()
    finally:
        pipe.close()
    warm = [rss for pages, rss in samples if pages >= min(100, args.pages // 10)]
    growth = (max(warm) - warm[0]) / 2**20 if warm else None
    summary = {"benchmark": "worker RSS over a long run", "engine": args.engine, "pages": samples[-1][0] if samples else 0,
               "rss_mib_after_warmup": round(warm[0] / 2**20, 1) if warm else None,
               "rss_mib_max": round(max(warm) / 2**20, 1) if warm else None,
               "growth_mib": round(growth, 1) if growth is not None else None, "target": "growth <= 50 MB",
               "hardware": hardware()}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p for p, _ in samples], [r / 2**20 for _, r in samples])
    ax.set_xlabel("pages processed")
    ax.set_ylabel("worker RSS (MiB)")
    ax.set_title("Worker memory")
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "memory.png", dpi=100)
    emit("memory", summary)


def main() -> None:
    global SCANS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ratio")
    r.add_argument("--pages", type=int, default=14)
    r.add_argument("--rounds", type=int, default=2, help="A B C D rounds (ratios are per round, then the median)")
    r.set_defaults(fn=cmd_ratio)
    c = sub.add_parser("ceiling")
    c.add_argument("--pages", type=int, default=60)
    c.add_argument("--workers", type=int, default=1)
    c.add_argument("--wait-ms", type=int, default=20, help="batch_max_wait_ms of the workers (default 20)")
    c.set_defaults(fn=cmd_ceiling)
    lt = sub.add_parser("latency")
    lt.add_argument("--docs", type=int, default=20)
    lt.add_argument("--interval", type=float, default=4.0)
    lt.set_defaults(fn=cmd_latency)
    sc = sub.add_parser("scaling")
    sc.add_argument("--pages", type=int, default=24)
    sc.add_argument("--counts", default="1,2,4")
    sc.set_defaults(fn=cmd_scaling)
    lp = sub.add_parser("loop")
    lp.add_argument("--pages", type=int, default=8)
    lp.set_defaults(fn=cmd_loop)
    ov = sub.add_parser("overhead")
    ov.add_argument("--pages", type=int, default=12, help="pages of the large scanned PDF (~15 MB each)")
    ov.add_argument("--docs", type=int, default=2, help="copies submitted per run")
    ov.add_argument("--workers", type=int, default=4)
    ov.add_argument("--rounds", type=int, default=2)
    ov.set_defaults(fn=cmd_overhead)
    mm = sub.add_parser("memory")
    mm.add_argument("--pages", type=int, default=1000)
    mm.add_argument("--engine", default="none", choices=["none", "auto", "openvino", "onnxruntime"])
    mm.set_defaults(fn=cmd_memory)
    for sp in (r, c, lt, sc, lp, ov, mm):
        sp.add_argument("--scans", type=Path, default=SCANS, help=f"folder of PDFs to use as pages (default {SCANS})")
    args = ap.parse_args()
    SCANS = args.scans
    args.fn(args)


if __name__ == "__main__":
    main()
