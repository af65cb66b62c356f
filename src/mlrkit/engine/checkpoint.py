"""Checkpoints: safetensors weights + JSON metadata, and the full training state for resume.

All files are written atomically (temp file + rename), so a crash never leaves a torn file.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..io import atomic_write, atomic_write_text

SEMANTIC_KEYS = ("__semantics__.embeddings", "__semantics__.graph")


class CheckpointError(FileNotFoundError):
    pass


def save_checkpoint(stem: Path, model: torch.nn.Module, meta: dict[str, Any],
                    semantics: dict[str, torch.Tensor | None] | None = None) -> Path:
    """Write ``<stem>.safetensors`` (weights + label semantics) and ``<stem>.json`` (meta)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    for key, value in (semantics or {}).items():
        if value is not None:
            tensors[f"__semantics__.{key}"] = value.detach().cpu().float().contiguous()
    blob = st_save(tensors, metadata={"format": "mlrkit", "version": str(meta.get("version"))})
    blob = _canonical_header(blob)
    weights = stem.with_suffix(".safetensors")
    with atomic_write(weights) as f:
        f.write(blob)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(meta, indent=2, default=str))
    return weights


def _canonical_header(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header written in one fixed way.

    safetensors keeps the metadata in a hash map whose order changes from process to
    process, so equal weights gave different bytes (and digests). The header is rewritten
    with sorted keys and no spaces, padded with spaces to a multiple of 8 bytes as
    safetensors does; offsets count from the end of the header, so the data is unchanged.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (its ``best``, else ``last``), a ``.safetensors`` or ``.json`` file, or
    ``hf-hub:owner/name[@revision]`` (downloaded into huggingface_hub's cache, see mlrkit.hub).
    """
    if str(path).startswith("hf-hub:"):
        from ..hub import download_checkpoint

        path = download_checkpoint(str(path))
    p = Path(path)
    if p.is_dir():
        for stem in ("best", "last"):
            if (p / f"{stem}.safetensors").exists():
                return p / f"{stem}.safetensors"
        raise CheckpointError(f"{p}: no best.safetensors or last.safetensors in this run "
                              "directory; train first or pass a checkpoint file")
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    return p


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state dict incl. ``__semantics__.*`` entries, metadata)."""
    weights = resolve_checkpoint(path)
    meta_path = weights.with_suffix(".json")
    if not meta_path.exists():
        raise CheckpointError(f"{meta_path}: checkpoint metadata missing (it is written next "
                              "to the .safetensors file)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: unreadable metadata ({e})") from None
    try:
        state = st_load(weights.read_bytes())
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{weights}: unreadable weights ({e})") from None
    return state, meta


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def _load_error_cause(e: BaseException) -> str:
    """The informative line of a ``torch.load`` error (its notes on ``weights_only`` and where
    to file issues are left out)."""
    skip = ("weights only load failed", "please file an issue", "check the documentation",
            "(1)", "(2)")
    for line in str(e).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.lower().startswith(skip):
            return line.split(". ")[0].rstrip(".")  # the first sentence
    return type(e).__name__


def load_train_state(path: Path) -> dict[str, Any]:
    """The state ``save_train_state`` wrote; loaded with ``weights_only=True``, so a file
    that would run code on loading is refused rather than executed."""
    if not path.exists():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        cause = _load_error_cause(e)
        if "GLOBAL" in cause:  # a callable weights_only blocks, e.g. os.system
            raise CheckpointError(
                f"{path}: refused to load: it names Python objects a training state never "
                f"holds ({cause}); mlrkit did not write it, or it was altered. Delete it, or "
                "resume from an earlier copy") from None
        raise CheckpointError(f"{path}: training state is truncated or corrupt ({cause}); "
                              "delete it, or resume from an earlier copy") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: training state is truncated or corrupt "
                              f"({_load_error_cause(e)}); delete it, or resume from an "
                              "earlier copy") from None
