"""Export a trained model to a file that runs without mlrkit: ONNX or TorchScript.

The exported graph maps ``images`` (float32 ``(B, 3, S, S)``, already resized and normalized
as the backbone's preprocessing says) to ``logits`` (``(B, C)``; scores are
``sigmoid(logits)``); the batch size is free, the side ``S`` fixed. Everything needed to feed
the file and read its output travels inside it as JSON (class names, thresholds, image size,
mean/std, interpolation): ONNX metadata key ``mlrkit``, TorchScript extra file
``mlrkit.json``.

ONNX goes through ``torch.export`` (``torch.onnx.export(dynamo=True)``, needs ``onnx`` and
``onnxscript``; ``onnxruntime`` for the check); TorchScript through ``torch.jit.trace``.
Backbones' inference-only BatchNorm folding is skipped while tracing; the graph holds the
plain network (ONNX Runtime folds BatchNorm itself when it loads the file).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits",)
METADATA_KEY = "mlrkit"  # ONNX metadata_props key; TorchScript extra file METADATA_KEY.json
# check=True: the written file must give PyTorch's logits to this tolerance (float32 ops that
# exporters reorder or fuse differ by ~1e-5; a wrong graph differs by far more)
CHECK_RTOL, CHECK_ATOL = 1e-3, 1e-3

__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAMES", "ExportResult", "LogitsModule",
           "export_model", "read_metadata"]


class LogitsModule(nn.Module):
    """``images -> logits``: the model's forward with only the tensor that deployment needs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


@dataclass
class ExportResult:
    path: Path
    format: str
    input_name: str
    input_shape: tuple[str | int, ...]  # ("batch", 3, S, S)
    output_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    max_abs_diff: float | None = None  # exported vs PyTorch on a random batch (check=True)


def _load(checkpoint_or_model: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode on the CPU, and what the checkpoint says about it."""
    from .model import MLRModel

    if isinstance(checkpoint_or_model, nn.Module):
        model = checkpoint_or_model
        names = getattr(getattr(model, "head", None), "class_names", None)
        info: dict[str, Any] = {"label_names": list(names) if names else None,
                                "thresholds": None, "image_size": None}
        if not isinstance(model, MLRModel):
            raise TypeError(f"export_model: expected an MLRModel or a checkpoint path, got "
                            f"{type(model).__name__}")
        return model.cpu().eval(), info
    from .predict import load_model

    model, cfg, meta = load_model(checkpoint_or_model, "cpu")
    return model.eval(), {"label_names": list(meta["label_names"]),
                          "thresholds": [float(t) for t in meta["thresholds"]],
                          "image_size": int(cfg.data.image_size)}


def _metadata(model: nn.Module, info: dict[str, Any], size: int) -> dict[str, Any]:
    from . import __version__

    pre = model.backbone.preprocessing
    return {"mlrkit_version": __version__, "method": getattr(model, "method", None),
            "backbone": getattr(model.backbone, "name", type(model.backbone).__name__),
            "input": INPUT_NAME, "outputs": list(OUTPUT_NAMES), "scores": "sigmoid(logits)",
            "image_size": size, "mean": list(pre.mean), "std": list(pre.std),
            "interpolation": getattr(pre, "interpolation", "bilinear"),
            "label_names": info["label_names"], "thresholds": info["thresholds"]}


def _cause(e: BaseException) -> str:
    """The innermost error's type and first line, without terminal colour codes."""
    import re

    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = re.sub(r"\x1b\[[0-9;]*m", "", lines[0]) if lines else ""
    return f"{type(e).__name__}: {first[:300]}"


def _write(path: Path, blob: bytes) -> None:
    from .io import atomic_write

    with atomic_write(path) as f:
        f.write(blob)


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path,
                 meta: dict[str, Any], opset: int | None) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the packages onnx and onnxscript "
                          f"(pip install 'mlrkit[export]'): {e}") from None
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False)
    except Exception as e:  # noqa: BLE001 - torch.onnx wraps torch.export's errors
        raise RuntimeError(f"{path}: ONNX export failed ({_cause(e)})") from e
    proto = program.model_proto
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:  # a number: some code turned the batch size into a Python int
        raise RuntimeError(f"{path}: ONNX export fixed the batch size at {dim0.dim_value} "
                           "(the model's code loops or branches on the batch size); not "
                           "written")
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    if proto.ByteSize() > 2**31 - 2**20:
        raise ValueError(f"{path}: the model is over the 2 GB a single ONNX file holds")
    _write(path, proto.SerializeToString())


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path,
                        meta: dict[str, Any]) -> None:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, (example,), check_trace=False)
            buf = io.BytesIO()  # saving is where untraceable Python calls are found
            torch.jit.save(traced, buf, _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
    except Exception as e:  # noqa: BLE001 - the tracer raises several types
        raise RuntimeError(f"{path}: TorchScript tracing failed ({_cause(e)})") from e
    _write(path, buf.getvalue())


def _run_exported(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("checking an ONNX export needs onnxruntime (pip install "
                              "'mlrkit[export]'), or pass check=False") from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
    loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad(), torch.jit.optimized_execution(False):
        return loaded(x)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON an export wrote into its file (class names, thresholds, preprocessing)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                 .metadata_props}
        if METADATA_KEY not in props:
            raise ValueError(f"{path}: no '{METADATA_KEY}' metadata (not an mlrkit export)")
        return json.loads(props[METADATA_KEY])
    extra = {f"{METADATA_KEY}.json": ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[f"{METADATA_KEY}.json"]:
        raise ValueError(f"{path}: no {METADATA_KEY}.json inside (not an mlrkit export)")
    return json.loads(extra[f"{METADATA_KEY}.json"])


def export_model(checkpoint_or_model: Any, out_path: str | Path, format: str = "onnx",
                 image_size: int | None = None, check: bool = True,
                 opset: int | None = None) -> ExportResult:
    """Write ``images -> logits`` of a model to ``out_path`` as ONNX or TorchScript.

    ``checkpoint_or_model``: a run directory / ``.safetensors`` checkpoint or an
    ``MLRModel``. ``image_size``: the input side (default: the checkpoint's
    ``data.image_size``, else the backbone's preprocessing size). ``check``: run the written
    file (onnxruntime / ``torch.jit.load``) on a random batch of 3 (the export traced a batch
    of 2), record the largest difference from PyTorch in ``max_abs_diff``, and remove the file
    and raise if it is over ``CHECK_ATOL`` / ``CHECK_RTOL``.
    """
    if format not in FORMATS:
        raise ValueError(f"export: format {format!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out_path)
    if out.is_dir():
        raise IsADirectoryError(f"{out}: a folder; give the file to write")
    model, info = _load(checkpoint_or_model)
    size = image_size or info["image_size"] or model.backbone.preprocessing.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"export: image_size must be a positive int, got {size!r}")
    meta = _metadata(model, info, size)
    module = LogitsModule(model).eval()
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    if format == "onnx":
        _export_onnx(module, example, out, meta, opset)
    else:
        _export_torchscript(module, example, out, meta)
    result = ExportResult(out, format, INPUT_NAME, ("batch", 3, size, size),
                          list(OUTPUT_NAMES), meta)
    if check:
        x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = module(x)
        try:
            got = _run_exported(out, format, x)
            if got.shape != want.shape:
                raise RuntimeError(f"gives shape {tuple(got.shape)} for a batch of 3, PyTorch "
                                   f"{tuple(want.shape)}")
            result.max_abs_diff = float((got - want).abs().max())
            if not torch.allclose(got, want, rtol=CHECK_RTOL, atol=CHECK_ATOL):
                raise RuntimeError(f"logits differ from PyTorch's by up to "
                                   f"{result.max_abs_diff:.2e} on a batch of 3")
        except Exception as e:  # noqa: BLE001 - a file that does not compute the model goes
            out.unlink(missing_ok=True)
            raise RuntimeError(f"{out}: the exported file failed its check and was removed "
                               f"({_cause(e)})") from e
    return result
