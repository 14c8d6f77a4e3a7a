"""The torch runtime (``OCRSTREAM_ENGINE=torch``, ocrstream/engine/torch_session.py): the PP-OCR ONNX
graphs converted to PyTorch modules read what ONNX Runtime reads.

CI does not install torch (the multi-GB ``torch`` extra): the tests that need torch, onnx and
onnx2torch skip there; run them where the extra is installed (README, "Testing"). On a GPU host
the text equality is measured by ``bench/gpu_engine.py`` instead.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ocrstream.documents import open_pdf, render_pdf_page
from ocrstream.engine import create_engine, resolve_runtime
from ocrstream.settings import Settings

from conftest import REPO, SHARED, make_pdf

# onnx2torch 1.5.15's Slice warns on every call with torch >= 2.5 (torch_session filters it; pytest
# resets filters per test).
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence for multidimensional indexing")

MODELS = {"det": "PP-OCRv6_det_small.onnx", "rec": "PP-OCRv6_rec_small.onnx",
          "cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx"}


# Marks, not importorskip in the test body: the fixtures (engines, pages) are not even built where
# the packages are absent.
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed")
needs_torch = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("torch", "onnx", "onnx2torch")),
                                 reason="the torch extra (torch, onnx, onnx2torch) is not installed")


def _page(lines, size=(420, 200)):
    return render_pdf_page(open_pdf(make_pdf([lines], size=size, fontsize=16)), 1, 150, 10**8)


PAGES_LINES = [
    ["Invoice 2291 / Total 18.20", "Paid by card, 2024-05-01"],
    ["Ledger 2024", "Net total 99.50", "VAT 19 % 18.90"],
    ["The quick brown fox jumps over the lazy dog.", "0123456789 ABC xyz"],
]


@pytest.fixture(scope="module")
def pages():
    out = [_page(lines, (460, 220)) for lines in PAGES_LINES]
    scans = sorted((SHARED / "scans-dev").glob("*.pdf"))
    if scans:  # one real scanned court-filing page at the pipeline's DPI where the data is there
        out.append(render_pdf_page(open_pdf(scans[0].read_bytes()), 1, 150, 10**8))
    return out


@pytest.fixture(scope="module")
def ort_engine():
    return create_engine(Settings(engine="onnxruntime", page_orientation="off"))


@pytest.fixture(scope="module")
def torch_engine():
    import torch

    torch.set_num_threads(2)
    return create_engine(Settings(engine="torch", page_orientation="off"))


def _network_inputs(engine, pages):
    """Real inputs of the det and rec networks: detection inputs of ``pages``, recognition inputs
    of their text-line crops (each padded to its own width; and all of one page as one batch)."""
    from rapidocr.utils.process_img import get_rotate_crop_image

    det_inputs, rec_inputs = [], []
    detected, _ = engine._detect(pages)
    rec = engine._rec
    for img, _, boxes in detected:
        det_inputs.append(engine._det_input(img)[2])
        crops = [get_rotate_crop_image(img, copy.deepcopy(b)) for b in boxes[:6]]
        for c in crops[:3]:
            rec_inputs.append(rec.resize_norm_img(c, max(c.shape[1] / c.shape[0], 0.3))[None].astype(np.float32))
        widest = max(c.shape[1] / c.shape[0] for c in crops)
        rec_inputs.append(np.stack([rec.resize_norm_img(c, widest) for c in crops]).astype(np.float32))
    return det_inputs, rec_inputs


# --------------------------------------------------------------------------- no torch needed

def test_torch_runtime_resolves_and_its_precision_is_in_the_result_cache_fingerprint():
    from ocrstream import result_cache as rc

    assert resolve_runtime(Settings(engine="torch")) == ("torch", "torch")
    fp32, fp16 = Settings(engine="torch"), Settings(engine="torch", engine_precision="fp16")
    assert rc.fingerprint_digest(fp32) != rc.fingerprint_digest(fp16)
    assert {"torch", "onnx2torch", "onnx", "rapidocr"} <= set(rc.output_fingerprint(fp32)["packages"])
    assert rc.output_fingerprint(fp32)["settings"]["engine_precision"] == "fp32"
    # the other runtimes run fp32 whatever the setting says: their fingerprint ignores it
    ort = Settings(engine="onnxruntime")
    assert rc.fingerprint_digest(ort) == rc.fingerprint_digest(ort.model_copy(update={"engine_precision": "bf16"}))
    assert "engine_precision" not in rc.output_fingerprint(ort)["settings"]


@needs_onnx
def test_same_padding_becomes_explicit_pads_and_other_strides_are_refused():
    import onnx
    from onnx import TensorProto, helper

    from ocrstream.engine.torch_session import _same_pads, prepare_graph

    assert _same_pads("SAME_UPPER", [2, 2], [1, 1]) == [0, 0, 1, 1]
    assert _same_pads("SAME_LOWER", [2, 2], [1, 1]) == [1, 1, 0, 0]
    assert _same_pads("SAME_UPPER", [3, 2], [2, 1]) == [2, 0, 2, 1]

    def graph(strides):
        node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=strides, auto_pad="SAME_UPPER")
        ident = helper.make_node("Identity", ["y"], ["z"])
        g = helper.make_graph([node, ident, helper.make_node("Relu", ["z"], ["out"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 4, 4])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])

    model, stats = prepare_graph(graph([1, 1]))
    assert stats == {"identity_removed": 1, "constants_to_initializers": 0, "same_pad_rewritten": 1}
    (pool,) = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert {a.name: helper.get_attribute_value(a) for a in pool.attribute}["pads"] == [0, 0, 1, 1]
    assert [n.input[0] for n in model.graph.node if n.op_type == "Relu"] == ["y"]
    with pytest.raises(ValueError, match="strides"):
        prepare_graph(graph([2, 2]))
    assert onnx.checker.check_model(model) is None


@needs_onnx
def test_prepared_graphs_give_onnx_runtime_identical_outputs(ort_engine, pages):
    import onnx
    import onnxruntime as ort

    from ocrstream.engine.onnx import wheel_model
    from ocrstream.engine.torch_session import prepare_graph

    det_inputs, rec_inputs = _network_inputs(ort_engine, pages[:2])
    for part, inputs in (("det", det_inputs[:2]), ("rec", rec_inputs[:4])):
        path = wheel_model(MODELS[part])
        model, stats = prepare_graph(onnx.load(str(path)))
        assert stats["same_pad_rewritten"] == 3 and stats["identity_removed"] > 100
        before, after = ort.InferenceSession(str(path)), ort.InferenceSession(model.SerializeToString())
        name = before.get_inputs()[0].name
        for x in inputs:
            np.testing.assert_array_equal(before.run(None, {name: x})[0], after.run(None, {name: x})[0])


# --------------------------------------------------------------------------- torch

@needs_torch
def test_converted_networks_match_onnx_runtime_on_real_inputs(ort_engine, torch_engine, pages):
    det_inputs, rec_inputs = _network_inputs(ort_engine, pages)
    for x in det_inputs:
        a, b = ort_engine._det.session(x), torch_engine._det.session(x)
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        # probabilities in [0, 1]; measured up to 1.3e-4 apart (fp32 kernels sum in other orders)
        assert np.abs(a - b).max() < 1e-3
    for x in rec_inputs:
        a, b = ort_engine._rec.session(x), torch_engine._rec.session(x)
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-3
        assert (a.argmax(-1) == b.argmax(-1)).all()  # the same best path, so the same text


@needs_torch
def test_torch_engine_reads_the_same_text_as_onnxruntime(ort_engine, torch_engine, pages):
    info = torch_engine.info
    assert info.name == "torch" and info.device == "cpu"
    assert "torch-" in info.version and "onnx2torch-1.5.15" in info.version and info.version.endswith("fp32")
    a, b = ort_engine.ocr_batch(pages), torch_engine.ocr_batch(pages)
    assert sum(len(p.lines) for p in a) >= 7
    for pa, pb in zip(a, b):
        assert [line.text for line in pa.lines] == [line.text for line in pb.lines]
        assert all(abs(x - y) <= 1.0 for la, lb in zip(pa.lines, pb.lines)
                   for qa, qb in zip(la.polygon, lb.polygon) for x, y in zip(qa, qb))
    assert [line.text for line in b[1].lines][:2] == ["Ledger 2024", "Net total 99.50"]


@needs_torch
def test_cuda_without_cuda_is_an_error_naming_the_device():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(RuntimeError, match=r"OCRSTREAM_ENGINE_DEVICE=cuda:1 .*torch\.cuda is not available"):
        create_engine(Settings(engine="torch", engine_device="cuda:1"))
    with pytest.raises(ValueError, match="gpu:0"):
        create_engine(Settings(engine="torch", engine_device="gpu:0"))


@needs_torch
def test_gpu_bench_runs_on_cpu_with_tiny_settings(tmp_path):
    """bench/gpu_engine.py end to end on the CPU: every record is written, NVML fields are null
    without an NVIDIA GPU, and the torch runtime's text equals the CPU reference's."""
    import cv2

    pages = tmp_path / "pages"
    pages.mkdir()
    for i, lines in enumerate(PAGES_LINES[:2]):
        cv2.imwrite(str(pages / f"p{i}.png"), cv2.cvtColor(_page(lines, (460, 220)), cv2.COLOR_BGR2GRAY))
    out = tmp_path / "gpu.jsonl"
    # small pages read at a small detection size: the test is about the records, not the figures
    env = {**os.environ, "OCRSTREAM_DET_MIN_SIDE_LEN": "320"}
    run = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_engine.py"), "--device", "cpu",
                          "--pages-dir", str(pages), "--pages", "2", "--batch-sizes", "1,2", "--precisions", "fp32",
                          "--workers", "1", "--host-seconds", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("engine") == 2 and {"env", "reference", "per_page_loop", "host", "summary"} <= set(kinds)
    for r in records:
        if r["kind"] == "engine":
            assert r["runtime"] == "torch" and r["precision"] == "fp32" and r["error"] is None
            assert r["pages"] == 2 and r["pages_per_s"] > 0 and r["text_equal_share"] == 1.0
            assert r["gpu_util_pct"] is None and r["gpu_mem_used_mib"] is None
    assert {r["batch_size"] for r in records if r["kind"] == "engine"} == {1, 2}
    host = next(r for r in records if r["kind"] == "host")
    assert host["pages_per_s"] > 0 and host["workers"] == 1 and host["render"] == "png_decode"
