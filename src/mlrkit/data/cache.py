"""Feature cache: run a frozen backbone once over a dataset, keep the maps in a memory map.

A cache is a folder::

    <path>/features.npy   (N, D, H, W) float16 / float32 (bfloat16 kept as its uint16 bits)
    <path>/targets.npy    (N, C) int8
    <path>/index.json     key, ids, label names, shape, dtype

The key names everything the maps depend on: backbone name, a sha256 of the backbone's
actual tensors (parameters and buffers, so two checkpoints that differ in one weight never
share a cache, and the same weights loaded from anywhere do), the transform's ``repr``, a
sha256 of the image ids and paths, and the mlrkit version. ``FeatureCache.open`` refuses a
cache whose key differs from the expected one (``StaleCacheError``).

Extraction writes into ``<path>.partial`` and records the rows done after every batch;
an interrupted run resumes from the last completed batch, and the final rename publishes
the cache, so a reader never sees a half-written one. Writers hold an exclusive lock on
``<path>.lock`` from the first check to the publication, readers a shared one while they
open the files, so two runs that need the same new cache extract it once; a published
cache that cannot be read is rebuilt, and temp files of killed writes are removed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..io import FileLock, atomic_write_text, remove_stale_temps
from ..labels import LabelSpace
from .base import DataError

FORMAT = 1
_DTYPES: dict[torch.dtype, tuple[str, np.dtype]] = {
    torch.float16: ("float16", np.dtype(np.float16)),
    torch.float32: ("float32", np.dtype(np.float32)),
    torch.bfloat16: ("bfloat16", np.dtype(np.uint16)),  # numpy has no bfloat16: keep the bits
}
_STORAGE = {name: np_dtype for name, np_dtype in _DTYPES.values()}


class StaleCacheError(DataError):
    """A feature cache built for another backbone, weights, transform or image list."""


def _version() -> str:
    from .. import __version__

    return __version__


def backbone_name(backbone: torch.nn.Module) -> str:
    return str(getattr(backbone, "name", None) or type(backbone).__name__)


def images_hash(ids: Sequence[str], paths: Sequence[Any] | None = None) -> str:
    """sha256 of the image ids and, when the images are files, their paths.

    Labels are left out on purpose: feature maps do not depend on them, so a label protocol
    (partial, single positive) reuses the cache of the same images.
    """
    h = hashlib.sha256()
    h.update(json.dumps([str(i) for i in ids]).encode())
    if paths is not None:
        h.update(json.dumps([str(p) for p in paths]).encode())
    return h.hexdigest()


def default_transform(backbone: torch.nn.Module) -> Callable[[Any], torch.Tensor]:
    """The evaluation transform of the backbone's preprocessing: square resize with its
    filter, to tensor, its mean / std (``transforms.transform_for``)."""
    from .transforms import transform_for

    return transform_for(backbone.preprocessing, train=False)


def _dataset_ids(dataset: Dataset) -> list[str]:
    ids = getattr(dataset, "ids", None)
    return [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(dataset))]


def _dataset_targets(dataset: Dataset) -> torch.Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"feature cache: {type(dataset).__name__} has no .targets; "
                        "use a MultiLabelDataset (or give the dataset a (N, C) .targets)")
    return torch.as_tensor(targets).to(torch.int8)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict: every tensor's name, dtype, shape and bytes.

    Equal for equal weights however they were loaded (a pretrained file, a checkpoint), and
    different as soon as one value differs.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(backbone: torch.nn.Module, dataset: Dataset,
              transform: Callable[[Any], Any] | None) -> dict[str, Any]:
    """Everything the cached maps depend on; two caches are interchangeable iff keys match."""
    return {
        "format": FORMAT,
        "backbone": backbone_name(backbone),
        "architecture": hashlib.sha256(repr(backbone).encode()).hexdigest()[:16],
        "weights": weights_digest(backbone),
        "transform": repr(transform),
        "images": images_hash(_dataset_ids(dataset), getattr(dataset, "paths", None)),
        "mlrkit_version": _version(),
    }


def cache_name(key: dict[str, Any]) -> str:
    """A folder name for ``key``: the backbone name and 16 hex digits of the key's hash."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{key.get('backbone', 'features')}-{digest}"


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _lock(path: Path, shared: bool = False) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(path.name + ".lock"), shared=shared,
                    what=f"feature cache {path}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable JSON ({e}); delete the cache folder and "
                        "extract again") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _key_diff(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    return [f"{k}: cached {found.get(k)!r}, expected {expected.get(k)!r}"
            for k in sorted(set(found) | set(expected)) if found.get(k) != expected.get(k)]


class FeatureCache:
    """A published feature cache, read through a read-only memory map."""

    def __init__(self, path: Path, index: dict[str, Any]) -> None:
        self.path = path
        self.index = index
        self.key: dict[str, Any] = index["key"]
        self.ids: list[str] = list(index["ids"])
        self.shape: tuple[int, ...] = tuple(index["shape"])
        self.dtype: str = index["dtype"]
        lab = index.get("labels")
        self.labels: LabelSpace | None = (
            LabelSpace(tuple(lab["names"]), torch.tensor(lab["seen"]), torch.tensor(lab["unseen"]))
            if lab else None)
        self._features: np.ndarray | None = None
        tpath = path / "targets.npy"
        try:
            self.targets = torch.from_numpy(np.load(tpath, allow_pickle=False).astype(np.int8))
        except (OSError, ValueError) as e:
            raise DataError(f"{tpath}: unreadable ({e}); delete {path} and extract again") from None
        self._check()

    def _check(self) -> None:
        n = self.shape[0]
        if len(self.ids) != n or self.targets.shape[0] != n:
            raise DataError(f"{self.path}/index.json: {n} feature rows but {len(self.ids)} ids "
                            f"and {self.targets.shape[0]} target rows; delete and extract again")
        feats = self.features
        if feats.shape != self.shape or feats.dtype != _STORAGE[self.dtype]:
            raise DataError(f"{self.path}/features.npy: shape {feats.shape} {feats.dtype}, index "
                            f"says {self.shape} {self.dtype}; delete and extract again")

    @property
    def features(self) -> np.ndarray:
        """The raw (N, D, H, W) memory map (storage dtype)."""
        if self._features is None:
            fpath = self.path / "features.npy"
            try:
                self._features = np.load(fpath, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"{fpath}: unreadable ({e}); delete {self.path} and "
                                "extract again") from None
        return self._features

    def __getstate__(self) -> dict[str, Any]:  # workers reopen the map instead of copying it
        state = dict(self.__dict__)
        state["_features"] = None
        return state

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """True when a published (complete) cache is at ``path``."""
        return (Path(path) / "index.json").is_file()

    @classmethod
    def open(cls, path: str | os.PathLike[str],
             expected_key: dict[str, Any] | None = None) -> FeatureCache:
        """Open the cache at ``path``; ``StaleCacheError`` if its key differs from
        ``expected_key`` in any field. Waits while a writer publishes it."""
        path = Path(path)
        with _lock(path, shared=True):
            return cls._open(path, expected_key)

    @classmethod
    def _open(cls, path: Path, expected_key: dict[str, Any] | None) -> FeatureCache:
        if not cls.exists(path):
            partial = _partial(path)
            if (partial / "progress.json").is_file():
                prog = _read_json(partial / "progress.json")
                raise DataError(f"{path}: feature extraction unfinished "
                                f"({prog.get('rows_done', 0)}/{prog.get('num_rows', '?')} "
                                "images); run extract_features again to resume it")
            raise DataError(f"{path}: no feature cache here (no index.json); "
                            "create it with extract_features / `mlrkit extract-features`")
        index = _read_json(path / "index.json")
        if index.get("format") != FORMAT or not index.get("complete"):
            raise DataError(f"{path}/index.json: format {index.get('format')!r} "
                            f"(this mlrkit reads {FORMAT}); delete {path} and extract again")
        if expected_key is not None:
            diff = _key_diff(index.get("key", {}), expected_key)
            if diff:
                raise StaleCacheError(
                    f"{path}: stale feature cache ({'; '.join(diff)}); delete it, or run "
                    "extract_features again (it rebuilds a stale cache)")
        return cls(path, index)

    def __len__(self) -> int:
        return self.shape[0]

    def _to_float(self, arr: np.ndarray) -> torch.Tensor:
        if self.dtype == "bfloat16":  # bfloat16 = the upper 16 bits of a float32
            out = (np.asarray(arr, dtype=np.uint32) << 16).view(np.float32)
        else:  # numpy's float16 -> float32 is much faster than torch's on CPU
            out = np.array(arr, dtype=np.float32)  # a copy out of the read-only map
        return torch.from_numpy(out)

    def get(self, i: int) -> torch.Tensor:
        """The float32 map (D, H, W) of row ``i``."""
        return self._to_float(self.features[i])

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Float32 maps (B, D, H, W) of the given rows."""
        return self._to_float(self.features[np.asarray(indices)])


class FeatureCacheDataset(Dataset):
    """A cache as a dataset: ``ds[i]`` -> (float32 map (D, H, W), int8 target)."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache
        self.targets = cache.targets
        self.ids = cache.ids
        self.labels = cache.labels
        self.transform = None
        self.info: dict[str, Any] = {"feature_cache": str(cache.path), "key": cache.key}

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.get(i), self.targets[i]


def _storage(dtype: torch.dtype | str) -> tuple[str, np.dtype]:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)  # type: ignore[assignment]
    if dtype not in _DTYPES:
        raise ValueError(f"feature cache: dtype must be one of float16, float32, bfloat16, "
                         f"got {dtype!r}")
    return _DTYPES[dtype]  # type: ignore[index]


def _labels_json(dataset: Dataset) -> dict[str, Any] | None:
    labels = getattr(dataset, "labels", None)
    if not isinstance(labels, LabelSpace):
        return None
    return {"names": list(labels.names), "seen": labels.seen.tolist(),
            "unseen": labels.unseen.tolist()}


def _publish(partial: Path, path: Path) -> None:
    """Swap ``partial`` in for ``path`` (caller holds the exclusive lock). Readers that
    still have the old files mapped keep them until they close them."""
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(partial, path)
    if old.exists():
        shutil.rmtree(old)


def _reusable(path: Path, key: dict[str, Any], dtype_name: str) -> FeatureCache | None:
    """The published cache at ``path`` if it matches ``key`` and ``dtype_name``; ``None``
    when there is none, it is stale, or it cannot be read (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        cache = FeatureCache._open(path, expected_key=key)
    except StaleCacheError:
        return None
    except DataError as e:
        import sys

        print(f"feature cache {path}: unreadable ({e}); extracting it again", file=sys.stderr)
        return None
    return cache if cache.dtype == dtype_name else None


def extract_features(backbone: torch.nn.Module, dataset: Dataset, path: str | os.PathLike[str],
                     batch_size: int = 32, num_workers: int = 0,
                     dtype: torch.dtype | str = torch.float16,
                     transform: Callable[[Any], Any] | None = None, progress: bool = True,
                     device: torch.device | str | None = None) -> FeatureCache:
    """Run ``backbone`` (eval mode, no gradients) over ``dataset`` into a cache at ``path``.

    ``transform`` defaults to the dataset's own transform, else the backbone's preprocessing
    (resize, to tensor, normalize). A matching published cache is returned as is; a stale
    one is rebuilt; an interrupted extraction with the same key resumes where it stopped.
    """
    path = Path(path)
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1, got {batch_size}")
    dtype_name, np_dtype = _storage(dtype)
    if transform is None:
        transform = getattr(dataset, "transform", None) or default_transform(backbone)
    key = cache_key(backbone, dataset, transform)
    with _lock(path):  # one writer at a time; readers wait for the publication
        cache = _reusable(path, key, dtype_name)
        if cache is not None:
            return cache
        _extract(backbone, dataset, path, key, batch_size, num_workers, dtype_name, np_dtype,
                 transform, progress, device)
        return FeatureCache._open(path, expected_key=key)


def _extract(backbone: torch.nn.Module, dataset: Dataset, path: Path, key: dict[str, Any],
             batch_size: int, num_workers: int, dtype_name: str, np_dtype: np.dtype,
             transform: Callable[[Any], Any], progress: bool,
             device: torch.device | str | None) -> None:
    """Fill ``<path>.partial`` (resuming it when its key matches) and publish it."""
    ids, targets = _dataset_ids(dataset), _dataset_targets(dataset)
    n = len(ids)
    if n == 0:
        raise DataError("extract_features: the dataset is empty")

    partial = _partial(path)
    remove_stale_temps(partial)
    prog_path = partial / "progress.json"
    state: dict[str, Any] | None = None
    if prog_path.is_file():
        with contextlib.suppress(DataError):
            state = _read_json(prog_path)
        if state is not None and (state.get("key") != key or state.get("dtype") != dtype_name
                                  or state.get("num_rows") != n
                                  or not (partial / "features.npy").is_file()):
            state = None
    if state is None:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        state = {"key": key, "dtype": dtype_name, "num_rows": n, "rows_done": 0, "shape": None}
        np.save(partial / "targets.npy", targets.numpy())
        atomic_write_text(prog_path, json.dumps(state))
    start = int(state["rows_done"])

    ds = copy.copy(dataset)
    ds.transform = transform  # type: ignore[attr-defined]
    loader = DataLoader(Subset(ds, range(start, n)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    if device is None:
        param = next(iter(backbone.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    fmm: np.ndarray | None = None
    if state["shape"] is not None:
        fmm = np.load(partial / "features.npy", mmap_mode="r+", allow_pickle=False)
    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=start, disable=not progress, unit="img",
               desc=f"features {path.name}")
    try:
        row = start
        for images, _ in loader:
            with torch.inference_mode():
                fmap = backbone(images.to(device)).map
            if fmm is None:
                state["shape"] = [n, *fmap.shape[1:]]
                fmm = np.lib.format.open_memmap(partial / "features.npy", mode="w+",
                                                dtype=np_dtype, shape=tuple(state["shape"]))
            if list(fmap.shape[1:]) != state["shape"][1:]:
                raise DataError(f"extract_features: image {ids[row]} gives a map of shape "
                                f"{tuple(fmap.shape[1:])}, earlier ones "
                                f"{tuple(state['shape'][1:])}; use a transform with a fixed size")
            out = fmap.detach().to("cpu", getattr(torch, dtype_name))
            if not bool(torch.isfinite(out).all()):
                raise DataError(f"extract_features: non-finite features for images "
                                f"{ids[row]}..{ids[row + len(out) - 1]} in {dtype_name} "
                                "(overflow?); use dtype=torch.float32")
            if dtype_name == "bfloat16":
                out = out.view(torch.int16)
            fmm[row:row + len(out)] = out.numpy().view(np_dtype)
            fmm.flush()
            row += len(out)
            state["rows_done"] = row
            atomic_write_text(prog_path, json.dumps(state))  # Feature cache: resume point
            bar.update(len(out))
    finally:
        bar.close()
        backbone.train(was_training)
        del fmm
    if state["shape"] is None:  # every row was done before this call
        raise DataError(f"{partial}: progress says done but no features; delete it")
    index = {"format": FORMAT, "complete": True, "key": key, "ids": ids,
             "labels": _labels_json(dataset), "shape": state["shape"], "dtype": dtype_name,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(partial / "index.json", json.dumps(index))
    prog_path.unlink()
    os.chmod(partial / "index.json", 0o644)
    _publish(partial, path)


__all__ = ["FeatureCache", "FeatureCacheDataset", "StaleCacheError", "cache_key", "cache_name",
           "default_transform", "extract_features", "images_hash", "weights_digest"]
