"""The PP-OCR ONNX graphs as PyTorch modules: the ``torch`` runtime (``OCRSTREAM_ENGINE=torch``).

Why: ``onnxruntime-gpu`` is a 256 MB wheel on CUDA 12 or 13 builds that must match the host; a
host with PyTorch (a CUDA machine image, a GPU notebook) already has CUDA kernels for every
operator these graphs use. The very ONNX files of the other runtimes (PP-OCRv6 small det/rec and
the mobile v2 angle classifier, inside the ``rapidocr`` 3.10 wheel, or ``OCRSTREAM_MODEL_DIR``) are
converted when the engine loads; nothing is stored. :class:`TorchSession` has the call shape of
RapidOCR's ONNX Runtime session (``numpy NCHW float32 in -> numpy out``), so the engine swaps it in
for the network calls only and keeps RapidOCR's pre- and post-processing: the text comes from the
same code path as on the other runtimes (:class:`ocrstream.engine.onnx.OnnxEngine`).

Conversion (:func:`prepare_graph`, then ``onnx2torch.convert``):

1. **Identity nodes are removed** (PaddlePaddle's exporter leaves about 140 per graph, mostly on
   weights): their consumers read the Identity's input directly. An Identity that produces a
   graph output stays.
2. **Constant nodes holding a tensor become initializers** (the angle classifier keeps its 308
   weights that way; onnx2torch reads convolution weights from initializers only).
3. **``auto_pad=SAME_UPPER`` / ``SAME_LOWER`` become explicit pads** (3 nodes per graph: 2x2 Conv
   and MaxPool, stride 1, which onnx2torch 1.5.15 refuses). With stride 1 the padding does not
   depend on the input size: ``dilation * (kernel - 1)`` per axis, the odd pixel at the end
   (SAME_UPPER), so a 2x2 kernel gets ``pads=[0, 0, 1, 1]``. ONNX Runtime gives identical outputs
   on the rewritten graphs (``tests/test_engine_torch.py``). Other strides raise ``ValueError``.

Converter: **onnx2torch 1.5.15**, not onnx2pytorch 0.6.0 (which implements SAME_UPPER itself):
after steps 1-3 onnx2torch converts every operator of the three graphs (all opset 11), and
what it builds is a ``torch.fx.GraphModule``: plain generated PyTorch code (``module.code``),
one submodule per ONNX node, which ``torch.inference_mode``, ``torch.autocast`` and the fx / compile
tool chain take as it is, with the batch dimension left free. onnx2pytorch instead walks its
node list in its own ``forward``; it has no advantage here that would pay for a second graph
interpreter, and the one thing onnx2torch lacks (SAME_UPPER) is a few lines of graph rewrite
that ONNX Runtime itself checks.

Precision (``OCRSTREAM_ENGINE_PRECISION``): ``fp32`` runs the graphs as exported, in IEEE fp32 on
a GPU too (a CUDA session turns off TF32 for the process: PyTorch lets cuDNN convolutions use
TF32, 10 mantissa bits, by default); ``fp16`` / ``bf16`` run them under ``torch.autocast`` (convolutions and matrix products in that type,
softmax and reductions in fp32) and return fp32 arrays. Whether the text stays equal is what
``bench/gpu_engine.py`` measures per precision; ``fp32`` is the default.

onnx2torch imports torchvision at import time for its NMS and RoiAlign converters only; none of
these graphs has those operators. Where torchvision is not installed (a bare PyTorch image),
:func:`_import_onnx2torch` lets onnx2torch import against a placeholder that raises if either is
ever called, and takes the placeholder out of ``sys.modules`` again, so nothing else sees it.

Device: ``cpu`` or ``cuda:N``. A CUDA device that torch cannot use is a ``RuntimeError`` at load,
never a silent CPU fallback.
"""

from __future__ import annotations

import contextlib
import sys
import types
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("fp32", "fp16", "bf16")
"""Values of ``OCRSTREAM_ENGINE_PRECISION``."""

_POOLS_AND_CONVS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")

# onnx2torch 1.5.15's Slice indexes with a list, which torch >= 2.5 warns about on every call
# (the results are checked against ONNX Runtime by tests/test_engine_torch.py).
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                        category=UserWarning)


def _import_onnx2torch():
    """``onnx2torch.convert``, importing onnx2torch against a torchvision placeholder where
    torchvision is not installed (module docstring).

    Raises:
        ImportError: onnx2torch (or torch, onnx) is not installed.
    """
    try:
        import torchvision  # noqa: F401
    except ImportError:
        def _absent(*_a, **_k):
            raise NotImplementedError("this ONNX graph needs torchvision (NMS / RoiAlign): install torchvision")

        stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.roi_align = ops.nms = ops.box_convert = _absent
        stub.ops = ops
        sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
        try:
            from onnx2torch import convert as onnx2torch_convert
        finally:
            for name in ("torchvision", "torchvision.ops"):
                if sys.modules.get(name) in (stub, ops):
                    del sys.modules[name]
        return onnx2torch_convert
    from onnx2torch import convert as onnx2torch_convert

    return onnx2torch_convert


def check_device(device: str) -> str:
    """Validate a torch device string for the ``torch`` runtime.

    Args:
        device: ``cpu``, ``cuda`` (= ``cuda:0``) or ``cuda:N``.

    Returns:
        the canonical device string (``cpu`` or ``cuda:N``).

    Raises:
        ValueError: any other device kind (e.g. paddle's ``gpu:N``).
        RuntimeError: a CUDA device while ``torch.cuda`` is not available (a CPU-only torch build,
            no driver) or the index is beyond ``torch.cuda.device_count()``.
    """
    import torch

    if device == "cpu":
        return device
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"OCRSTREAM_ENGINE=torch runs on cpu or cuda:N, not {device!r}")
    idx = int(index or 0)
    if not torch.cuda.is_available():
        raise RuntimeError(f"OCRSTREAM_ENGINE_DEVICE={device} but torch.cuda is not available (torch "
                           f"{torch.__version__}, CUDA build {torch.version.cuda}): install a CUDA build of "
                           "torch and the NVIDIA driver, or use cpu")
    if idx >= torch.cuda.device_count():
        raise RuntimeError(f"OCRSTREAM_ENGINE_DEVICE={device} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return f"cuda:{idx}"


def _same_pads(auto_pad: str, kernel: list[int], dilations: list[int]) -> list[int]:
    """Explicit ONNX ``pads`` (``[begin..., end...]``) for SAME padding with stride 1."""
    totals = [d * (k - 1) for k, d in zip(kernel, dilations)]
    if auto_pad == "SAME_UPPER":  # the odd pixel goes to the end
        begins = [t // 2 for t in totals]
    else:  # SAME_LOWER: to the beginning
        begins = [t - t // 2 for t in totals]
    return begins + [t - b for t, b in zip(totals, begins)]


def prepare_graph(model: Any) -> tuple[Any, dict[str, int]]:
    """Rewrite an ONNX graph for onnx2torch (module docstring): remove Identity nodes, move
    tensor Constant nodes to initializers, turn ``auto_pad=SAME_*`` with stride 1 into explicit
    ``pads``. ``model`` is changed in place; ONNX Runtime computes the same outputs from it.

    Args:
        model: an ``onnx.ModelProto``.

    Returns:
        ``(model, {"identity_removed": n, "constants_to_initializers": c, "same_pad_rewritten": m})``.

    Raises:
        ValueError: a SAME-padded node with a stride other than 1 (its pads depend on the input
            size, which a static rewrite cannot know), or whose kernel size cannot be found.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    # 1. Identity: map each removable output to the name it copies (chains resolve to the first).
    alias: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in graph_outputs:
            src = node.input[0]
            alias[node.output[0]] = alias.get(src, src)
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    removed = len(graph.node) - len(keep)
    # 2. Constant nodes with a tensor value -> initializers of the same name.
    nodes, constants = [], 0
    for node in keep:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"} and node.output[0] not in graph_outputs:
            tensor = helper.get_attribute_value(attrs["value"])
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            constants += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)

    # 3. SAME padding -> explicit pads.
    weights = {init.name: list(init.dims) for init in graph.initializer}
    rewritten = 0
    for node in graph.node:
        if node.op_type not in _POOLS_AND_CONVS:
            continue
        attrs = {a.name: a for a in node.attribute}
        auto_pad = attrs.get("auto_pad")
        mode = helper.get_attribute_value(auto_pad).decode() if auto_pad is not None else "NOTSET"
        if mode not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        if "kernel_shape" in attrs:
            kernel = list(helper.get_attribute_value(attrs["kernel_shape"]))
        elif len(node.input) > 1 and node.input[1] in weights:
            kernel = weights[node.input[1]][2:]
        else:
            raise ValueError(f"{node.op_type} node {node.name!r}: SAME padding without a known kernel size")
        strides = list(helper.get_attribute_value(attrs["strides"])) if "strides" in attrs else [1] * len(kernel)
        if any(s != 1 for s in strides):
            raise ValueError(f"{node.op_type} node {node.name!r}: auto_pad={mode} with strides {strides} "
                             "(only stride 1 can be rewritten to fixed pads)")
        dilations = (list(helper.get_attribute_value(attrs["dilations"])) if "dilations" in attrs
                     else [1] * len(kernel))
        pads = _same_pads(mode, kernel, dilations)
        for a in [a for a in node.attribute if a.name in ("auto_pad", "pads")]:
            node.attribute.remove(a)
        node.attribute.append(helper.make_attribute("pads", pads))
        rewritten += 1
    onnx.checker.check_model(model)
    return model, {"identity_removed": removed, "constants_to_initializers": constants,
                   "same_pad_rewritten": rewritten}


def convert(model_path: str | Path) -> Any:
    """Load an ONNX file, :func:`prepare_graph` it and convert it with onnx2torch.

    Returns:
        a ``torch.fx.GraphModule`` in eval mode on the CPU.

    Raises:
        ImportError: ``onnx`` or ``onnx2torch`` is not installed (``pip install 'ocrstream[torch]'``).
        ValueError: see :func:`prepare_graph`.
        NotImplementedError: onnx2torch has no converter for an operator of the graph.
    """
    import onnx

    onnx2torch_convert = _import_onnx2torch()
    model, _ = prepare_graph(onnx.load(str(model_path)))
    return onnx2torch_convert(model).eval()


class TorchSession:
    """One PP-OCR network on torch, called like RapidOCR's ONNX Runtime session.

    Args:
        model_path: the ONNX file (det, cls or rec).
        device: ``cpu`` or ``cuda:N`` (:func:`check_device`).
        precision: ``fp32``, ``fp16`` or ``bf16`` (module docstring).
        inference_mode: run under ``torch.inference_mode`` (no autograd bookkeeping); off only to
            debug.

    Raises:
        ValueError: unknown precision or device kind; see :func:`convert`.
        RuntimeError: a CUDA device torch cannot use.
        ImportError: torch, onnx or onnx2torch missing.
    """

    def __init__(self, model_path: str | Path, device: str = "cpu", precision: str = "fp32",
                 inference_mode: bool = True):
        import onnx
        import torch

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = check_device(device)
        self.precision = precision
        self.inference_mode = inference_mode
        self.model_path = Path(model_path)
        self._torch = torch
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        if precision == "fp32" and self.device.startswith("cuda"):
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.module = convert(model_path).to(self.device)
        # The recognizer's character list travels in the ONNX metadata (RapidOCR reads it there).
        meta = onnx.load(str(model_path), load_external_data=False).metadata_props
        self._metadata = {p.key: p.value for p in meta}

    def __call__(self, input_content: np.ndarray) -> np.ndarray:
        """Run the network on one batch.

        Args:
            input_content: ``NxCxHxW float32`` (any N; H and W as the network takes them).

        Returns:
            the network's first output as a float32 numpy array (det ``Nx1xHxW`` probabilities,
            rec ``NxTxC`` character probabilities, cls ``Nx2``).

        Raises:
            MemoryError: the CUDA caching allocator could not get memory for the batch (callers
                split the batch and retry).
        """
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(input_content, dtype=np.float32))
        grad = torch.inference_mode() if self.inference_mode else contextlib.nullcontext()
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        cast = (torch.autocast(device_type=kind, dtype=self._dtype) if self._dtype is not None
                else contextlib.nullcontext())
        try:
            with grad, cast:
                y = self.module(x.to(self.device, non_blocking=False))
                if isinstance(y, (tuple, list)):
                    y = y[0]
                return y.float().cpu().numpy()
        except torch.cuda.OutOfMemoryError as exc:
            raise MemoryError(str(exc)[:500]) from exc

    # --- what RapidOCR asks a session besides running it -------------------------------------
    def have_key(self, key: str = "character") -> bool:
        """True if the ONNX metadata holds ``key`` (the recognizer's character list)."""
        return key in self._metadata

    def get_character_list(self, key: str = "character") -> list[str]:
        """The recognizer's characters, one per line of the metadata value ``key``.

        Raises:
            KeyError: no such metadata entry.
        """
        return self._metadata[key].splitlines()


def describe(precision: str) -> str:
    """The versions and precision this runtime adds to ``EngineInfo.version``:
    ``torch-<v> onnx2torch-<v> <precision>``."""
    return f"torch-{metadata.version('torch')} onnx2torch-{metadata.version('onnx2torch')} {precision}"
