"""The engine on a GPU: pages/s by batch size and precision, GPU utilisation, text agreement with
the CPU runtime, the per-page loop, engines sharing one GPU, and the host side (issue 12).

    python bench/gpu_engine.py --render                       # here: scans-dev PDFs -> .gpu-pages/ (PNG, 150 DPI)
    python bench/gpu_engine.py --device cuda:0 --out gpu.jsonl  # on the GPU machine (bench/gpu_run.sh)
    python bench/gpu_engine.py --device cpu --pages 3 --batch-sizes 1,2   # the same code on a CPU, tiny

Pages are pre-rendered (``--render``: every page of ``../shared/data/scans-dev/*.pdf`` at 150 DPI,
grayscale PNG, 95 pages 13 MiB; ``--with-pdfs`` also copies the PDFs for the host-side render
figure, 4.4 MiB more; checked under 40 MiB) so the GPU machine needs neither PyMuPDF nor the data
folder. (PyMuPDF's wheel, about 20 MiB and more, does not fit in the device command beside the
rapidocr wheel's 27 MiB of models: there the host side decodes the PNGs instead of rendering.) Each page is read with OpenCV as a
3-channel BGR array, as the worker hands pages to the engine.

One JSON line per record (stdout and ``--out``), in this order:

- ``env``: device name, driver, CUDA (torch's build and the driver's), torch / onnxruntime /
  onnx2torch versions, CPU count, page count.
- ``reference``: the CPU runtime's reading of the same pages: ONNX Runtime on this machine's CPU,
  ``--workers`` processes x 1 thread (``--reference auto``, default; written to
  ``<out>.reference.json`` so another run can take it with ``--reference FILE``). Same engine
  settings as the GPU runs, recognition batched (``--rec-batch-size`` > 1: crops padded to 64-px
  width buckets, the GPU path), so a difference is the runtime's and device's arithmetic, nothing
  else. Its pages/s is a **CPU** figure.
- ``host``: the host side over all cores: ``--workers`` processes, each running the engine's own
  code for one page at a time with the two network calls replayed (detection returns this
  page's probability map computed once on the device, recognition returns blank outputs): render
  (from the PDF when PyMuPDF is installed, else PNG decode), detection pre-processing, DB
  post-processing, crops, recognition pre-processing. CTC decoding of blank outputs is cheaper
  than of real ones: a slight overestimate. Pages/s over ``--host-seconds``.
- ``engine``: one per precision x batch size: ``batch_size`` pages per ``ocr_batch`` call
  (detection of the same-size pages in one network call, their crops pooled and recognized
  ``rec_batch_size`` at a time), pages/s over the pages (after one untimed warm-up call), the
  share of wall time inside network calls, NVML utilisation (mean, max) and memory (max) sampled
  every 50 ms in a thread during the timed run, torch's peak allocation, and the share of pages
  whose text equals the reference's (``text_equal_share``; ``lines_equal_share`` per line).
- ``per_page_loop``: one page per call on the same device and runtime, for each precision and
  ``--loop-rec-batch-sizes``; the best of them is the loop's figure.
- ``engine_procs``: ``P`` engine processes sharing the device (``ocrstream run --workers-per-gpu``),
  at the best batch size and precision whose text equals the reference on >= 99 % of pages,
  for each ``--engine-procs``: aggregate pages/s from a common start.
- ``summary``: best engine pages/s (text equal on >= 99 % of pages), best per-page loop, the
  ratios of the best single engine and of the best engine_procs to it, host pages/s; which bounds.

A setting that fails (out of device memory, ...) is a record with ``error`` set, not a crash;
``--max-seconds`` caps one setting, ``--deadline-s`` the whole run (later settings are reported
as ``skipped``). NVML absent (no NVIDIA driver): its fields are null.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SCANS = REPO.parent / "shared" / "data" / "scans-dev"
PAGES_DIR = REPO / ".gpu-pages"
RENDER_LIMIT_BYTES = 40 * 1024 * 1024
"""--render refuses to leave more than this in the pages folder: the GPU machine takes 64 MiB per
command in all, wheels included (../shared/gpu.md)."""
EQUAL_TARGET = 0.99
"""Issue 12: text equal to the CPU runtime's on at least this share of pages."""


# --------------------------------------------------------------------------- render (here)

def render(src: Path, out: Path, dpi: int, with_pdfs: bool = False) -> dict:
    """Render every page of ``src/*.pdf`` at ``dpi`` to grayscale PNG in ``out`` (and, with
    ``with_pdfs``, copy the PDFs to ``out/pdf``); writes ``out/manifest.json``.

    Raises:
        SystemExit: no PDFs, or the folder would exceed :data:`RENDER_LIMIT_BYTES`.
    """
    import pymupdf

    pdfs = sorted(src.glob("*.pdf"))
    if not pdfs:
        raise SystemExit(f"no PDFs in {src}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if with_pdfs:
        (out / "pdf").mkdir()
    pages = []
    for pdf in pdfs:
        if with_pdfs:
            shutil.copy2(pdf, out / "pdf" / pdf.name)
        doc = pymupdf.open(pdf)
        for i, page in enumerate(doc, start=1):
            name = f"{pdf.stem}-p{i:03d}.png"
            page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY, alpha=False).save(out / name)
            pages.append({"png": name, "pdf": f"pdf/{pdf.name}" if with_pdfs else None, "page": i})
    manifest = {"dpi": dpi, "source": str(src), "pages": pages}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary = {"kind": "render", "pages": len(pages), "pdfs": len(pdfs), "dpi": dpi, "folder": str(out),
               "bytes": size, "mib": round(size / 2**20, 2)}
    if size > RENDER_LIMIT_BYTES:
        raise SystemExit(f"{out} holds {size / 2**20:.1f} MiB, more than {RENDER_LIMIT_BYTES / 2**20:.0f} MiB")
    return summary


# --------------------------------------------------------------------------- records

class Recorder:
    """Writes each record as one JSON line to stdout and (appended, flushed) to ``path``."""

    def __init__(self, path: Path | None):
        self.path = path
        self.records: list[dict] = []
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def __call__(self, record: dict) -> dict:
        self.records.append(record)
        line = json.dumps(record, sort_keys=False)
        print(line, flush=True)
        if self.path:
            with self.path.open("a") as f:
                f.write(line + "\n")
        return record


def _round(x, n=2):
    return None if x is None else round(x, n)


# --------------------------------------------------------------------------- NVML

class NvmlSampler:
    """Samples one GPU's utilisation (%) and memory used (MiB) every ``interval_s`` in a thread.
    Without NVML (no driver, no ``pynvml``) every figure is None."""

    def __init__(self, index: int | None, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.handle = None
        self.nvml = None
        if index is None:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.nvml = pynvml
        except Exception:  # noqa: BLE001 - no NVIDIA driver / library: figures stay null
            self.handle = None

    def info(self) -> dict:
        """Device name, driver version and the driver's CUDA version (None without NVML)."""
        if self.handle is None:
            return {"nvml": False, "nvml_name": None, "driver": None, "driver_cuda": None}
        n = self.nvml

        def text(v):
            return v.decode() if isinstance(v, bytes) else v

        cuda = n.nvmlSystemGetCudaDriverVersion_v2() if hasattr(n, "nvmlSystemGetCudaDriverVersion_v2") \
            else n.nvmlSystemGetCudaDriverVersion()
        return {"nvml": True, "nvml_name": text(n.nvmlDeviceGetName(self.handle)),
                "driver": text(n.nvmlSystemGetDriverVersion()), "driver_cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
                "memory_total_mib": round(n.nvmlDeviceGetMemoryInfo(self.handle).total / 2**20)}

    def __enter__(self):
        self.util: list[float] = []
        self.mem: list[float] = []
        self._stop = threading.Event()
        if self.handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        n = self.nvml
        while not self._stop.is_set():
            try:
                self.util.append(n.nvmlDeviceGetUtilizationRates(self.handle).gpu)
                self.mem.append(n.nvmlDeviceGetMemoryInfo(self.handle).used / 2**20)
            except Exception:  # noqa: BLE001 - a failed sample is skipped
                pass
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        if self.handle is not None:
            self._thread.join(2)

    def figures(self) -> dict:
        return {"gpu_util_pct": _round(statistics.fmean(self.util), 1) if self.util else None,
                "gpu_util_max_pct": max(self.util) if self.util else None,
                "gpu_mem_used_mib": round(max(self.mem)) if self.mem else None,
                "nvml_samples": len(self.util)}


# --------------------------------------------------------------------------- engines

def engine_settings(args, runtime: str, device: str, precision: str = "fp32", **kw):
    from ocrstream.settings import Settings

    values = dict(engine=runtime, engine_device=device, engine_precision=precision,
                  det_batch_size=max(args.batch_sizes), rec_batch_size=args.rec_batch_size,
                  batch_max_pages=max(args.batch_sizes))
    values.update(kw)
    return Settings(**values)


def inner(engine):
    """The OnnxEngine behind an OrientingEngine (or the engine itself)."""
    return getattr(engine, "inner", engine)


class NetworkClock:
    """Wraps the det/cls/rec sessions of an engine and sums the seconds spent inside them."""

    def __init__(self, engine):
        self.seconds = 0.0
        e = inner(engine)
        for stage in (e._det, e._cls, e._rec):
            if stage is not None:
                stage.session = self._wrap(stage.session)

    def _wrap(self, session):
        def timed(x):
            t = time.perf_counter()
            try:
                return session(x)
            finally:
                self.seconds += time.perf_counter() - t

        timed.inner = session
        return timed


def page_text(page) -> str:
    return "\n".join(line.text for line in page.lines)


def agreement(names: list[str], texts: list[str], reference: dict[str, str] | None) -> dict:
    if reference is None:
        return {"text_equal_share": None, "text_equal_pages": None, "lines_equal_share": None}
    equal = sum(reference.get(n) == t for n, t in zip(names, texts))
    lines_total = lines_equal = 0
    for n, t in zip(names, texts):
        ref = (reference.get(n) or "").split("\n")
        got = t.split("\n")
        lines_total += max(len(ref), len(got))
        lines_equal += sum(a == b for a, b in zip(ref, got))
    return {"text_equal_share": round(equal / max(1, len(names)), 4), "text_equal_pages": equal,
            "lines_equal_share": round(lines_equal / max(1, lines_total), 4)}


def read_page(path) -> "np.ndarray":
    """A pre-rendered page as ``HxWx3 uint8 BGR`` (OpenCV).

    Raises:
        FileNotFoundError: the file is absent or not an image OpenCV reads.
    """
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: absent or not an image")
    return image


def load_pages(folder: Path, limit: int) -> tuple[list[str], list]:
    names = sorted(p.name for p in folder.glob("*.png"))
    if limit:
        names = names[:limit]
    if not names:
        raise SystemExit(f"no PNG pages in {folder} (run `python bench/gpu_engine.py --render` first)")
    return names, [read_page(folder / n) for n in names]


def run_setting(engine, names, images, batch_size, args, sampler_index, reference) -> dict:
    """Time ``engine.ocr_batch`` over the pages in chunks of ``batch_size`` (after one untimed call
    on the first chunk), with NVML sampling and the network clock."""
    torch = _torch()
    clock = NetworkClock(engine) if not getattr(engine, "_clocked", False) else engine._clock
    engine._clocked, engine._clock = True, clock
    engine.ocr_batch(images[:batch_size])  # warm-up: kernels, allocator, first shapes
    cuda = torch is not None and args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    texts: list[str] = []
    clock.seconds = 0.0
    with NvmlSampler(sampler_index) as sampler:
        t0 = time.perf_counter()
        for start in range(0, len(images), batch_size):
            texts.extend(page_text(p) for p in engine.ocr_batch(images[start:start + batch_size]))
            if time.perf_counter() - t0 > args.max_seconds:
                break
        elapsed = time.perf_counter() - t0
    done = len(texts)
    return {"pages": done, "seconds": round(elapsed, 3), "pages_per_s": round(done / elapsed, 3),
            "network_share": round(clock.seconds / elapsed, 3), **sampler.figures(),
            "torch_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
            **agreement(names[:done], texts, reference)}


_TORCH = None


def _torch():
    global _TORCH
    if _TORCH is None:
        try:
            import torch

            _TORCH = torch
        except ImportError:
            _TORCH = False
    return _TORCH or None


def _free(engine):
    torch = _torch()
    del engine
    import gc

    gc.collect()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- worker processes

def _reference_worker(payload):
    """One CPU reference process: ONNX Runtime, 1 thread, its share of the pages."""
    folder, names, settings_kw = payload
    from ocrstream.engine import create_engine
    from ocrstream.settings import Settings

    engine = create_engine(Settings(**settings_kw))
    out = {}
    for n in names:
        (page,) = engine.ocr_batch([read_page(Path(folder) / n)])
        out[n] = page_text(page)
    return out


def compute_reference(args, names) -> tuple[dict[str, str], dict]:
    kw = dict(engine="onnxruntime", engine_device="cpu", engine_threads=1, rec_batch_size=args.rec_batch_size,
              det_batch_size=1, engine_precision="fp32")
    workers = max(1, min(args.workers, len(names)))
    shares = [(str(args.pages_dir), names[i::workers], kw) for i in range(workers)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_reference_worker, shares)
    elapsed = time.perf_counter() - t0
    texts = {k: v for part in parts for k, v in part.items()}
    return texts, {"runtime": "onnxruntime", "device": "cpu", "workers": workers, "threads_per_worker": 1,
                   "rec_batch_size": args.rec_batch_size, "pages": len(texts), "seconds": round(elapsed, 2),
                   "cpu_pages_per_s_incl_model_load": round(len(texts) / elapsed, 3)}


def _host_worker(payload):
    """One host-side process: the engine's code per page with both network calls replayed."""
    folder, maps_dir, items, seconds, settings_kw, barrier = payload
    import numpy as np

    from ocrstream.engine import create_engine
    from ocrstream.settings import Settings

    engine = inner(create_engine(Settings(**settings_kw)))
    current = {}
    n_chars = len(engine._characters)  # blank, the model's characters, space

    def det_replay(x):
        return current["map"]

    def rec_replay(x):
        out = np.zeros((x.shape[0], x.shape[3] // 8, n_chars), np.float32)
        out[:, :, 0] = 1.0  # blank everywhere
        return out

    engine._det.session, engine._rec.session = det_replay, rec_replay
    try:
        import pymupdf

        from ocrstream.documents import render_pdf_page
    except ImportError:
        pymupdf = None
    docs = {}
    # memory-mapped: the processes share the maps through the page cache (95 pages ~ 0.8 GB)
    maps = {it["png"]: np.load(Path(maps_dir) / (it["png"] + ".npy"), mmap_mode="r") for it in items}
    barrier.wait()  # every process loaded: they run side by side
    done, render_s = 0, 0.0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for it in items:
            t = time.perf_counter()
            if pymupdf is not None and it.get("pdf") and (Path(folder) / it["pdf"]).is_file():
                doc = docs.get(it["pdf"]) or docs.setdefault(it["pdf"], pymupdf.open(Path(folder) / it["pdf"]))
                image = render_pdf_page(doc, it["page"], 150, 10**9)
            else:
                image = read_page(Path(folder) / it["png"])
            render_s += time.perf_counter() - t
            current["map"] = maps[it["png"]]
            engine.ocr_batch([image])
            done += 1
            if time.perf_counter() - t0 >= seconds:
                break
    rendered = pymupdf is not None and any(it.get("pdf") and (Path(folder) / it["pdf"]).is_file() for it in items)
    return {"pages": done, "seconds": time.perf_counter() - t0, "render_s": render_s,
            "render": "pdf_150dpi" if rendered else "png_decode"}


def save_det_maps(engine, names, images, folder: Path) -> None:
    """The detection network's probability map of each page (float32 .npy), for the host side."""
    import numpy as np

    e = inner(engine)
    folder.mkdir(parents=True, exist_ok=True)
    for n, image in zip(names, images):
        _, _, x = e._det_input(image)
        np.save(folder / (n + ".npy"), e._det.session(x).astype(np.float32))


def measure_host(args, names, maps_dir: Path) -> dict:
    manifest = args.pages_dir / "manifest.json"
    by_png = {}
    if manifest.is_file():
        by_png = {p["png"]: p for p in json.loads(manifest.read_text())["pages"]}
    items = [by_png.get(n, {"png": n}) for n in names]
    if args.no_pdf_render:
        items = [{"png": it["png"]} for it in items]
    workers = max(1, args.workers)
    kw = dict(engine="onnxruntime", engine_device="cpu", engine_threads=1, rec_batch_size=args.rec_batch_size,
              det_batch_size=1, page_orientation="off")
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(workers) as pool:
        barrier = manager.Barrier(workers, timeout=600)
        shares = [(str(args.pages_dir), str(maps_dir), items[i % len(items):] + items[:i % len(items)],
                   args.host_seconds, kw, barrier) for i in range(workers)]
        parts = pool.map(_host_worker, shares)
    pages = sum(p["pages"] for p in parts)
    wall = max(p["seconds"] for p in parts)
    render_s = sum(p["render_s"] for p in parts)
    busy_s = sum(p["seconds"] for p in parts)
    return {"workers": workers, "pages": pages, "seconds": round(wall, 2), "pages_per_s": round(pages / wall, 2),
            "render": parts[0]["render"], "render_share": round(render_s / busy_s, 3),
            "render_pages_per_s_per_core": round(pages / render_s, 2) if render_s else None,  # or PNG decode
            "post_pages_per_s_per_core": round(pages / (busy_s - render_s), 2) if busy_s > render_s else None}


def _procs_worker(payload):
    """One of P engine processes sharing the device: its pages, batch after batch, from a common start."""
    folder, names, settings_kw, batch_size, barrier = payload

    from ocrstream.engine import create_engine
    from ocrstream.settings import Settings

    engine = create_engine(Settings(**settings_kw))
    images = [read_page(Path(folder) / n) for n in names]
    engine.ocr_batch(images[:batch_size])
    barrier.wait()  # every process loaded and warmed up, and the main process sampling
    t0 = time.perf_counter()
    texts = []
    for start in range(0, len(images), batch_size):
        texts.extend(page_text(p) for p in engine.ocr_batch(images[start:start + batch_size]))
    return {"names": names, "texts": texts, "seconds": time.perf_counter() - t0}


def measure_procs(args, names, procs: int, precision: str, batch_size: int, sampler_index, reference) -> dict:
    kw = dict(engine=args.runtime, engine_device=args.device, engine_precision=precision,
              det_batch_size=batch_size, rec_batch_size=args.rec_batch_size, batch_max_pages=batch_size)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(procs) as pool:
        barrier = manager.Barrier(procs + 1, timeout=args.procs_timeout_s)
        shares = [(str(args.pages_dir), names[i::procs], kw, batch_size, barrier) for i in range(procs)]
        pending = pool.map_async(_procs_worker, shares)
        barrier.wait()
        with NvmlSampler(sampler_index) as sampler:
            parts = pending.get()
    wall = max(p["seconds"] for p in parts)
    all_names = [n for p in parts for n in p["names"]]
    all_texts = [t for p in parts for t in p["texts"]]
    return {"procs": procs, "precision": precision, "batch_size": batch_size, "pages": len(all_names),
            "seconds": round(wall, 3), "pages_per_s": round(len(all_names) / wall, 3),
            **sampler.figures(),
            **agreement(all_names, all_texts, reference)}


# --------------------------------------------------------------------------- main

def env_record(args, names) -> tuple[dict, int | None]:
    from importlib import metadata

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    torch = _torch()
    index = None
    device_name = platform.processor() or platform.machine()
    if args.device.startswith("cuda"):
        index = int(args.device.split(":")[1]) if ":" in args.device else 0
        if torch is not None and torch.cuda.is_available():
            device_name = torch.cuda.get_device_name(index)
    nvml = NvmlSampler(index).info()
    rec = {"kind": "env", "device": args.device, "device_name": device_name, **nvml,
           "torch_cuda": getattr(getattr(torch, "version", None), "cuda", None) if torch else None,
           "python": platform.python_version(), "torch": version("torch"), "onnxruntime": version("onnxruntime"),
           "onnxruntime_gpu": version("onnxruntime-gpu"), "onnx2torch": version("onnx2torch"),
           "onnx": version("onnx"), "rapidocr": version("rapidocr"), "torchvision": version("torchvision"),
           "cpu_count": os.cpu_count(), "pages": len(names), "pages_dir": str(args.pages_dir),
           "runtime": args.runtime, "rec_batch_size": args.rec_batch_size}
    return rec, index


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--render", action="store_true", help="render the scans to --pages-dir and stop")
    ap.add_argument("--src", type=Path, default=SCANS, help="PDFs to render (--render)")
    ap.add_argument("--with-pdfs", action="store_true", help="--render: also copy the PDFs (host-side render)")
    ap.add_argument("--dpi", type=int, default=150)
    ap.add_argument("--pages-dir", type=Path, default=PAGES_DIR)
    ap.add_argument("--pages", type=int, default=0, help="first N pages (by name); 0 = all")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--runtime", default="torch", help="OCRSTREAM_ENGINE of the measured runs (torch, onnxruntime)")
    ap.add_argument("--precisions", default=None, help="comma list; default fp32,fp16,bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--rec-batch-size", type=int, default=64, help="text-line crops per recognition call (> 1)")
    ap.add_argument("--loop-rec-batch-sizes", default="6,64", help="per-page loop: recognition batch sizes tried")
    ap.add_argument("--engine-procs", default=None, help="engine processes sharing the device; default 4,8 on "
                    "CUDA, none on CPU")
    ap.add_argument("--procs-timeout-s", type=float, default=180.0,
                    help="engine_procs: longest wait for the processes to load their models")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="processes: CPU reference and host side")
    ap.add_argument("--host-seconds", type=float, default=15.0)
    ap.add_argument("--no-pdf-render", action="store_true", help="host side: decode the PNGs instead of rendering")
    ap.add_argument("--reference", default="auto", help="auto (compute here on the CPU) | FILE | none")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="cap on one setting's timed run")
    ap.add_argument("--deadline-s", type=float, default=0.0, help="skip settings once the run is this old; 0 = never")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--out", type=Path, default=None, help="also append the JSON lines here")
    args = ap.parse_args(argv)

    if args.render:
        print(json.dumps(render(args.src, args.pages_dir, args.dpi, args.with_pdfs)))
        return 0
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    cuda = args.device.startswith("cuda")
    precisions = (args.precisions or ("fp32,fp16,bf16" if cuda else "fp32")).split(",")
    if args.runtime != "torch":
        precisions = ["fp32"]
    loop_recs = [int(b) for b in args.loop_rec_batch_sizes.split(",") if b]
    procs_list = [int(p) for p in (args.engine_procs if args.engine_procs is not None else ("4,8" if cuda else ""))
                  .split(",") if p]
    if args.rec_batch_size < 2 or any(b < 2 for b in loop_recs):
        raise SystemExit("recognition batch sizes must be > 1 (1 switches to per-crop widths, another text path)")
    t_start = time.monotonic()
    rec = Recorder(args.out)

    def late(what) -> bool:
        if args.deadline_s and time.monotonic() - t_start > args.deadline_s:
            rec({"kind": "skipped", "what": what, "after_s": round(time.monotonic() - t_start, 1)})
            return True
        return False

    names, images = load_pages(args.pages_dir, args.pages)
    env, index = env_record(args, names)
    rec(env)
    torch = _torch()
    if torch is not None and args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True

    # The CPU reference.
    reference = None
    if args.reference == "auto":
        reference, meta = compute_reference(args, names)
        ref_path = (args.out.with_suffix(".reference.json") if args.out else REPO / "bench" / "out" / "gpu-reference.json")
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(json.dumps({"meta": meta, "pages": reference}, indent=1))
        rec({"kind": "reference", "source": "computed", "file": str(ref_path), **meta})
    elif args.reference != "none":
        data = json.loads(Path(args.reference).read_text())
        reference = data["pages"]
        missing = [n for n in names if n not in reference]
        rec({"kind": "reference", "source": "file", "file": args.reference, **data.get("meta", {}),
             "missing_pages": len(missing)})

    from ocrstream.engine import create_engine

    results: list[dict] = []
    maps_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu-bench-maps-{os.getpid()}"
    for pi, precision in enumerate(precisions):
        if late(f"engine {precision}"):
            break
        t = time.perf_counter()
        try:
            engine = create_engine(engine_settings(args, args.runtime, args.device, precision))
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot load is a record
            rec({"kind": "engine", "runtime": args.runtime, "precision": precision, "error": repr(exc)[:500]})
            continue
        load_s = round(time.perf_counter() - t, 2)
        if pi == 0:
            save_det_maps(engine, names, images, maps_dir)
            if not late("host"):
                rec({"kind": "host", **measure_host(args, names, maps_dir)})
        for bs in args.batch_sizes:
            if late(f"engine {precision} batch {bs}"):
                break
            base = {"kind": "engine", "device": args.device, "device_name": env["device_name"],
                    "runtime": args.runtime, "precision": precision, "batch_size": bs,
                    "rec_batch_size": args.rec_batch_size, "engine_version": engine.info.version,
                    "load_s": load_s, "cudnn_benchmark": args.cudnn_benchmark,
                    "tf32": bool(torch and torch.backends.cudnn.allow_tf32) if cuda else None}
            try:
                r = rec({**base, **run_setting(engine, names, images, bs, args, index, reference), "error": None})
                results.append(r)
            except MemoryError as exc:
                rec({**base, "error": f"out of memory: {str(exc)[:300]}"})
                _torch() and cuda and torch.cuda.empty_cache()
            except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
                rec({**base, "error": repr(exc)[:500]})
        # The per-page loop: one page per call, the recognition batch sizes tried in turn (set on
        # the engine as its settings would: the one attribute _recognize reads). The sweep's batch
        # size 1 at --rec-batch-size is that loop already: copied, not run twice.
        for rb in loop_recs:
            base = {"kind": "per_page_loop", "device": args.device, "runtime": args.runtime, "precision": precision,
                    "batch_size": 1, "rec_batch_size": rb}
            same = next((r for r in results if r["kind"] == "engine" and r["precision"] == precision
                         and r["batch_size"] == 1 and r["rec_batch_size"] == rb), None)
            if same is not None:
                results.append(rec({**same, **base, "same_as": "engine batch_size 1"}))
                continue
            if late(f"per_page_loop {precision} rec {rb}"):
                break
            inner(engine).rec_batch_size = rb
            try:
                results.append(rec({**base, **run_setting(engine, names, images, 1, args, index, reference),
                                    "error": None}))
            except Exception as exc:  # noqa: BLE001
                rec({**base, "error": repr(exc)[:500]})
        _free(engine)
    shutil.rmtree(maps_dir, ignore_errors=True)

    def ok(r):
        return r.get("error") is None and (r.get("text_equal_share") is None or r["text_equal_share"] >= EQUAL_TARGET)

    engines = [r for r in results if r["kind"] == "engine" and ok(r)]
    loops = [r for r in results if r["kind"] == "per_page_loop" and ok(r)]
    best = max(engines, key=lambda r: r["pages_per_s"], default=None)
    best_loop = max(loops, key=lambda r: r["pages_per_s"], default=None)
    procs_best = None
    if best is not None:
        for p in procs_list:
            if late(f"engine_procs {p}"):
                break
            try:
                r = rec({"kind": "engine_procs", "device": args.device, "runtime": args.runtime,
                         **measure_procs(args, names, p, best["precision"], best["batch_size"], index, reference),
                         "error": None})
                if ok(r) and (procs_best is None or r["pages_per_s"] > procs_best["pages_per_s"]):
                    procs_best = r
            except Exception as exc:  # noqa: BLE001
                rec({"kind": "engine_procs", "procs": p, "error": repr(exc)[:500]})
    host = next((r for r in rec.records if r["kind"] == "host"), None)
    top = max([x for x in (best, procs_best) if x], key=lambda r: r["pages_per_s"], default=None)
    bound = None
    if top is not None and host is not None:
        bound = "host (render + pre/post-processing)" if host["pages_per_s"] < top["pages_per_s"] else "engine"
        if top is best and best.get("network_share") is not None and best["network_share"] < 0.5:
            bound += "; the engine process itself spends most time outside network calls (its own CPU work)"
    rec({"kind": "summary", "device_name": env["device_name"], "runtime": args.runtime,
         "best_engine": best and {k: best[k] for k in ("precision", "batch_size", "pages_per_s", "text_equal_share",
                                                        "gpu_util_pct")},
         "best_per_page_loop": best_loop and {k: best_loop[k] for k in ("precision", "rec_batch_size", "pages_per_s")},
         "ratio_best_vs_loop": round(best["pages_per_s"] / best_loop["pages_per_s"], 2) if best and best_loop else None,
         "best_engine_procs": procs_best and {k: procs_best[k] for k in ("procs", "pages_per_s", "text_equal_share",
                                                                         "gpu_util_pct")},
         "ratio_procs_vs_loop": (round(procs_best["pages_per_s"] / best_loop["pages_per_s"], 2)
                                 if procs_best and best_loop else None),
         "host_pages_per_s": host and host["pages_per_s"], "bound": bound,
         "seconds": round(time.monotonic() - t_start, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
