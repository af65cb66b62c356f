"""NUS-WIDE: the 81-concept label space and the zero-shot space of 925 seen + 81 unseen.

Label spaces (``label_space=``):

- ``"81"``: the 81 concepts of ``Concepts81.txt``.
- ``"1006"``: the zero-shot space: 925 *seen* labels = the 1,000 tags of ``TagList1k.txt``
  minus those that are also concept names (75 of the 81 concepts are tags; ``computer``,
  ``fire``, ``map``, ``swimmers``, ``tattoo``, ``whales`` are not), in tag-list order,
  followed by the 81 concepts as *unseen* labels.
- ``"925"``: the seen part alone (zero-shot training).

Sources: the official layout (``ImageList/{Train,Test}Imagelist.txt``,
``Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt`` with one 0/1 per line in
image-list order, ``NUS_WID_Tags/{Train,Test}_Tags1k.dat`` with 1,000 0/1 columns per line),
or a ``file,idx idx ...`` list of concept indices (``labels_file=``, e.g. ``nus_val.txt``;
tag columns are then unknown).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..labels import NEGATIVE, POSITIVE, UNKNOWN, LabelSpace
from ..registry import DATASETS
from .base import DataError, MultiLabelDataset
from .listfile import BadLines, parse_index_list, read_names_file, resolve_file

_SPACES = ("81", "925", "1006")
_NO_LABEL = ("keep", "drop")


def _find(root: Path, name: str, subdirs: Sequence[str], what: str) -> Path:
    for sub in subdirs:
        p = root / sub / name if sub else root / name
        if p.is_file():
            return p
    places = ", ".join(str(root / s / name if s else root / name) for s in subdirs)
    raise DataError(f"NUS-WIDE: {what} not found (looked in {places}); pass it explicitly")


def _names(given: str | Path | Sequence[str] | None, base: Path, filename: str, subdir: str,
           count: int, what: str) -> tuple[str, ...]:
    """A name list: ``given`` names or names file, else ``filename`` found under ``base``."""
    if given is None:
        names = read_names_file(_find(base, filename, ["", subdir], filename))
    elif isinstance(given, (str, Path)):
        names = read_names_file(given)
    else:
        names = tuple(given)
    if len(names) != count:
        raise DataError(f"nuswide: expected {count} {what} names, got {len(names)}")
    return names


def nuswide_label_space(concepts: Sequence[str], tags: Sequence[str],
                        ) -> tuple[LabelSpace, np.ndarray]:
    """The 1,006-label zero-shot space and the tag-list columns of its seen part.

    Seen = tags that are not concept names (in tag-list order), unseen = all concepts.
    """
    concept_set = set(concepts)
    tag_cols = np.array([i for i, t in enumerate(tags) if t not in concept_set], dtype=np.int64)
    names = tuple(tags[i] for i in tag_cols) + tuple(concepts)
    seen = torch.zeros(len(names), dtype=torch.bool)
    seen[: len(tag_cols)] = True
    return LabelSpace(names, seen=seen, unseen=~seen), tag_cols


def read_binary_matrix(path: Path, ncols: int, bad: BadLines) -> np.ndarray:
    """A whitespace-separated 0/1 matrix (one row per line) as int8; bad rows become -1.

    Fast path: rows of single-digit tokens with one separator are read as one byte array.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    lines = [ln.strip() for ln in raw.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    width = 2 * ncols - 1
    out = np.empty((len(lines), ncols), dtype=np.int8)
    regular = np.fromiter((len(ln) == width for ln in lines), dtype=bool, count=len(lines))
    if regular.any():
        idx = np.flatnonzero(regular)
        block = np.frombuffer(b"".join(lines[i] for i in idx), dtype=np.uint8)
        block = block.reshape(len(idx), width)
        digits, seps = block[:, ::2], block[:, 1::2]
        ok = ((digits == 48) | (digits == 49)).all(1) & ((seps == 9) | (seps == 32)).all(1)
        out[idx[ok]] = digits[ok] - 48
        regular[idx[~ok]] = False
    for i in np.flatnonzero(~regular):  # irregular spacing or bad values: token by token
        toks = lines[i].split()
        if len(toks) != ncols or any(t not in (b"0", b"1") for t in toks):
            got = lines[i][:40].decode(errors="replace")
            bad.report(f"{path}:{i + 1}", f"expected {ncols} values 0/1, got {got!r}")
            out[i] = -1
            continue
        out[i] = np.array([t == b"1" for t in toks], dtype=np.int8)
    return out


def _official(root: Path, split: str, concepts: tuple[str, ...], need_tags: bool,
              need_concepts: bool, tags_file: Path | None, bad: BadLines,
              ) -> tuple[list[str], np.ndarray | None, np.ndarray | None]:
    s = split.capitalize()
    list_path = _find(root, f"{s}Imagelist.txt", ["ImageList", ""], f"{s}Imagelist.txt")
    files = [ln.strip().replace("\\", "/") for ln in
             list_path.read_text(encoding="utf-8-sig").splitlines()]
    files = [f for f in files if f]
    n = len(files)
    concept_m = None
    if need_concepts:
        gt = root / "Groundtruth" / "TrainTestLabels"
        concept_m = np.empty((n, len(concepts)), dtype=np.int8)
        for j, c in enumerate(concepts):
            col = read_binary_matrix(gt / f"Labels_{c}_{s}.txt", 1, bad)
            if len(col) != n:
                raise DataError(f"{gt / f'Labels_{c}_{s}.txt'}: {len(col)} lines but "
                                f"{list_path.name} lists {n} images")
            concept_m[:, j] = col[:, 0]
    tag_m = None
    if need_tags:
        path = tags_file or _find(root, f"{s}_Tags1k.dat", ["NUS_WID_Tags", ""],
                                  f"{s}_Tags1k.dat")
        tag_m = read_binary_matrix(path, 1000, bad)
        if len(tag_m) != n:
            raise DataError(f"{path}: {len(tag_m)} lines but {list_path.name} lists {n} "
                            "images")
    return files, concept_m, tag_m


def _to_targets(m: np.ndarray) -> np.ndarray:
    """0/1 (and -1 for skipped bad rows) -> mlrkit targets 1 / -1 / 0."""
    return np.select([m == 1, m == 0], [POSITIVE, NEGATIVE], UNKNOWN).astype(np.int8)


@DATASETS.register("nuswide")
def nuswide(root: str | None = None, split: str | None = "train", label_space: str = "81",
            labels_file: str | None = None, concepts: Sequence[str] | str | None = None,
            tags: Sequence[str] | str | None = None, tags_file: str | None = None,
            image_dir: str | None = None, no_label: str = "keep",
            skip_bad: bool = False) -> MultiLabelDataset:
    """NUS-WIDE in the 81-concept (``"81"``), zero-shot (``"1006"``) or seen (``"925"``) space.

    ``concepts`` / ``tags``: name lists or files (default ``Concepts81.txt`` and
    ``TagList1k.txt`` found under ``root``). ``no_label``: ``keep`` or ``drop`` images with no
    positive in the chosen space (NUS-WIDE has many). ``split``: ``train`` / ``test``.
    """
    if label_space not in _SPACES:
        raise DataError(f"nuswide: label_space={label_space!r}; choose one of "
                        f"{', '.join(_SPACES)}")
    if no_label not in _NO_LABEL:
        raise DataError(f"nuswide: no_label={no_label!r}; choose 'keep' or 'drop'")
    if root is None and labels_file is None:
        raise DataError("nuswide: pass root=<NUS-WIDE folder> or labels_file=<list file>")
    base = Path(root) if root is not None else Path(labels_file).parent  # type: ignore[arg-type]
    concept_names = _names(concepts, base, "Concepts81.txt", "ConceptsList", 81, "concept")
    tag_names: tuple[str, ...] = ()
    if label_space != "81":
        tag_names = _names(tags, base, "TagList1k.txt", "NUS_WID_Tags", 1000, "tag")
    bad = BadLines(skip_bad)
    info: dict[str, Any] = {"dataset": "nuswide", "label_space": label_space,
                            "no_label": no_label}

    if labels_file is not None:
        if label_space == "925":
            raise DataError("nuswide: a label list holds concept labels only; the 925 seen "
                            "tags need the official NUS_WID_Tags/*_Tags1k.dat files")
        path = resolve_file(labels_file, root, "nuswide")
        files, indices = parse_index_list(path, 81, bad)
        concept_t = np.full((len(files), 81), NEGATIVE, dtype=np.int8)
        lengths = np.array([len(i) for i in indices], dtype=np.int64)
        concept_t[np.repeat(np.arange(len(files)), lengths),
                  np.array([j for i in indices for j in i], dtype=np.int64)] = POSITIVE
        tag_t = None
        img_dir = Path(image_dir) if image_dir is not None else base
        info.update(source=str(path), tags="unknown (not in a concept list)")
    else:
        split = (split or "train").lower()
        if split not in ("train", "test"):
            raise DataError(f"nuswide: split={split!r}; choose train or test")
        files, concept_m, tag_m = _official(
            base, split, concept_names, need_tags=label_space != "81",
            need_concepts=label_space != "925",
            tags_file=Path(tags_file) if tags_file else None, bad=bad)
        concept_t = _to_targets(concept_m) if concept_m is not None else None
        tag_t = _to_targets(tag_m) if tag_m is not None else None
        img_dir = Path(image_dir) if image_dir is not None else base / "Flickr"
        info.update(source="official", split=split)

    n = len(files)
    if label_space == "81":
        labels = LabelSpace(concept_names)
        targets = concept_t
    else:
        labels, tag_cols = nuswide_label_space(concept_names, tag_names)
        seen_t = (tag_t[:, tag_cols] if tag_t is not None
                  else np.zeros((n, len(tag_cols)), dtype=np.int8))
        if label_space == "925":
            labels = labels.subset(labels.seen)
            targets = seen_t
        else:
            targets = np.concatenate([seen_t, concept_t], axis=1)
        info["concepts_not_in_tags"] = [c for c in concept_names if c not in set(tag_names)]
    assert targets is not None
    empty = ~(targets == POSITIVE).any(axis=1)
    keep = ~empty if no_label == "drop" else np.ones(n, dtype=bool)
    info["num_no_label"] = int(empty.sum())
    info["num_dropped"] = int((~keep).sum())
    kept = np.flatnonzero(keep)
    prefix = f"{img_dir}{os.sep}"
    paths = [prefix + files[i] for i in kept]
    ids = [os.path.splitext(os.path.basename(files[i]))[0] for i in kept]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"nuswide: duplicate image id {dup!r} in {info['source']}")
    bad.record(info)
    return MultiLabelDataset(paths, torch.from_numpy(np.ascontiguousarray(targets[kept])),
                             labels, ids=ids, info=info)


__all__ = ["nuswide", "nuswide_label_space", "read_binary_matrix"]
