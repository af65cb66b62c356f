"""Label protocols: partial labels, single positive label, zero-shot splits.

A ``Protocol`` is a target matrix in the mlrkit convention (1 / -1 / 0 unknown) plus the
metadata that reproduces it (name, parameters, seed, SHA-256 of the source ids and targets).
Protocols are saved as ``.npz`` files (int8 targets, a JSON header, optionally the image ids)
written atomically; loading re-hashes the targets and refuses a file whose hash differs.

Randomness uses NumPy's ``Generator(PCG64(seed))``; the saved file, not the generator, is
the reference for a published experiment. ``partial(..., rng="legacy")`` instead draws its mask
with NumPy's legacy Mersenne Twister, which reproduces the published VOC2007 partial-label
files bit for bit (see ``partial``), and ``single_positive_cole`` replays the legacy
``RandomState`` draws of the single-positive reference script (Cole et al. 2021).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write
from ..labels import NEGATIVE, POSITIVE, UNKNOWN, LabelSpace, validate_targets
from .base import DataError, MultiLabelDataset
from .listfile import BadLines, parse_index_list, targets_from_indices, unlisted_value

FORMAT_VERSION = 1


class ProtocolError(DataError):
    """A protocol file that is corrupt, altered, or does not fit the dataset."""


def targets_sha256(targets: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of the C-order int8 bytes of a target matrix."""
    arr = np.ascontiguousarray(torch.as_tensor(targets).to(torch.int8).numpy())
    return hashlib.sha256(arr.tobytes()).hexdigest()


def ids_sha256(ids: Sequence[str]) -> str:
    """SHA-256 of the image ids joined by newlines (UTF-8)."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Protocol:
    """Targets made by a label protocol, with the metadata that reproduces them."""

    targets: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        self.targets = validate_targets(self.targets, name="protocol targets")
        if self.ids is not None and len(self.ids) != len(self.targets):
            raise ProtocolError(f"protocol: {len(self.ids)} ids but {len(self.targets)} rows")
        self.meta = dict(self.meta)
        self.meta.setdefault("format", FORMAT_VERSION)
        self.meta["shape"] = list(self.targets.shape)
        self.meta["targets_sha256"] = targets_sha256(self.targets)
        if self.ids is not None:
            self.meta.setdefault("source_ids_sha256", ids_sha256(self.ids))

    @property
    def sha256(self) -> str:
        return self.meta["targets_sha256"]

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.npz``) atomically: temp file in the same folder + rename."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "targets": self.targets.numpy(),
            "meta_json": np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), np.uint8),
        }
        if self.ids is not None:
            arrays["ids_utf8"] = np.frombuffer("\n".join(self.ids).encode("utf-8"), np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        with atomic_write(path, "wb") as f:
            f.write(buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Protocol:
        """Read a protocol file and verify the SHA-256 of its targets."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                targets = z["targets"]
                meta = json.loads(z["meta_json"].tobytes().decode("utf-8"))
                ids = (z["ids_utf8"].tobytes().decode("utf-8").split("\n")
                       if "ids_utf8" in z.files else None)
        except FileNotFoundError:
            raise ProtocolError(f"{path}: protocol file not found") from None
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise ProtocolError(f"{path}: not a readable mlrkit protocol file ({e})") from None
        if targets.dtype != np.int8 or targets.ndim != 2:
            raise ProtocolError(f"{path}: targets must be a 2-D int8 array, got "
                                f"{targets.dtype} {targets.shape}")
        digest = targets_sha256(targets)
        if digest != meta.get("targets_sha256"):
            raise ProtocolError(f"{path}: SHA-256 of the targets is {digest}, the header says "
                                f"{meta.get('targets_sha256')}; the file was altered or is "
                                "corrupt (regenerate it from its seed)")
        if ids is not None and ids_sha256(ids) != meta.get("source_ids_sha256"):
            raise ProtocolError(f"{path}: image ids do not match their recorded SHA-256")
        return cls(torch.from_numpy(targets.copy()), meta, ids)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Protocol) and torch.equal(self.targets, other.targets)
                and self.meta == other.meta and self.ids == other.ids)


def _source(targets: torch.Tensor | MultiLabelDataset,
            ids: Sequence[str] | None) -> tuple[torch.Tensor, list[str] | None]:
    if isinstance(targets, MultiLabelDataset):
        return targets.targets, (list(ids) if ids is not None else list(targets.ids))
    return validate_targets(targets), (list(ids) if ids is not None else None)


PARTIAL_RNGS = ("pcg64", "legacy")
_RNG_NAMES = {"pcg64": "numpy.random.Generator(PCG64(seed))",
              "legacy": "numpy.random.RandomState(seed).random_sample((N, C))"}


def _meta(name: str, params: dict[str, Any], seed: int | None, t: torch.Tensor,
          ids: list[str] | None, rng: str = "pcg64") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "params": params, "seed": seed,
                            "rng": _RNG_NAMES[rng], "source_targets_sha256": targets_sha256(t)}
    if ids is not None:
        meta["source_ids_sha256"] = ids_sha256(ids)
    return meta


def partial(targets: torch.Tensor | MultiLabelDataset, keep: float, seed: int = 0,
            ids: Sequence[str] | None = None, rng: str = "pcg64") -> Protocol:
    """Keep each known label (positive or negative) independently with probability ``keep``.

    Dropped labels become unknown (0); unknown labels stay unknown. Images may end up with
    no known label (at small ``keep``), as in the partial-label protocol of Durand et al.

    One uniform number is drawn per entry of the whole (N, C) matrix, row by row, and entry
    (i, c) is kept where it is ``< keep``. ``rng`` picks the generator: ``"pcg64"`` (default,
    ``Generator(PCG64(seed))``) or ``"legacy"`` (``RandomState(seed)``, the same stream as
    ``np.random.seed(seed); np.random.random((N, C))``). With ``rng="legacy"``, ``seed=0``
    and VOC2007 trainval loaded with ``difficult="negative"``, the result equals the
    published ``train_proportion_<keep>.txt`` files (HCP-MLR-PL, TaI-DPT) exactly.
    """
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"partial: keep={keep} must be in [0, 1]")
    if rng not in PARTIAL_RNGS:
        raise ValueError(f"partial: rng={rng!r}; choose one of {', '.join(PARTIAL_RNGS)}")
    t, ids_ = _source(targets, ids)
    shape = tuple(t.shape)
    if rng == "legacy":
        if not 0 <= seed < 2**32:
            raise ValueError(f"partial: seed={seed} must be in [0, 2**32) for rng='legacy'")
        draws = np.random.RandomState(seed).random_sample(shape)
    else:
        draws = np.random.Generator(np.random.PCG64(seed)).random(shape)
    kept = torch.from_numpy(draws < keep)
    out = torch.where(kept, t, torch.zeros_like(t))
    params: dict[str, Any] = {"keep": keep} if rng == "pcg64" else {"keep": keep, "rng": rng}
    return Protocol(out, _meta("partial", params, seed, t, ids_, rng), ids_)


def single_positive(targets: torch.Tensor | MultiLabelDataset, seed: int = 0,
                    ids: Sequence[str] | None = None) -> Protocol:
    """Keep one positive per image, chosen uniformly; every other label becomes unknown.

    Images without any positive become all-unknown (recorded as ``num_without_positive``).
    """
    t, ids_ = _source(targets, ids)
    rng = np.random.Generator(np.random.PCG64(seed))
    pos = (t == POSITIVE).numpy()
    # uniform choice among positives: argmax of i.i.d. uniforms restricted to the positives
    scores = np.where(pos, rng.random(pos.shape), -1.0)
    choice = scores.argmax(axis=1)
    has_pos = pos.any(axis=1)
    out = np.zeros(pos.shape, dtype=np.int8)
    rows = np.flatnonzero(has_pos)
    out[rows, choice[rows]] = POSITIVE
    meta = _meta("single_positive", {}, seed, t, ids_)
    meta["num_without_positive"] = int((~has_pos).sum())
    return Protocol(torch.from_numpy(out), meta, ids_)


#: seed of the reference SPML sampling (``generate_observed_labels.py --seed``, default 1200)
COLE_SEED = 1200
COLE_ORDERS = ("auto", "given", "name", "coco_id")
# a COCO image id as mlrkit's loaders spell it: a 2014 file stem or a bare 12-digit 2017 stem
_COCO_STEM = re.compile(r"^(?:COCO_[A-Za-z]+\d{4}_)?(\d{12})$")


def _cole_order(ids: list[str] | None, n: int, order: str) -> tuple[np.ndarray, str]:
    """Row visiting order of the reference and the name of the rule used.

    The reference labels its rows in the order of its formatted label matrix: VOC image
    files sorted by name (``format_pascal.py``), COCO images sorted by ``str(image_id)``
    (``format_coco.py``, e.g. ``"100" < "9"``).
    """
    if order not in COLE_ORDERS:
        raise ValueError(f"single_positive_cole: order={order!r}; choose one of "
                         f"{', '.join(COLE_ORDERS)}")
    if order == "auto":
        if ids is None:
            order = "given"
        elif all(_COCO_STEM.match(i) for i in ids):
            order = "coco_id"
        else:
            order = "name"
    if order == "given":
        return np.arange(n), order
    if ids is None:
        raise ValueError(f"single_positive_cole: order={order!r} needs the image ids (pass a "
                         "dataset or ids=)")
    if order == "coco_id":
        keys = []
        for i in ids:
            m = _COCO_STEM.match(i)
            if m is None:
                raise ValueError(f"single_positive_cole: order='coco_id' but id {i!r} is not a "
                                 "COCO file stem (COCO_train2014_<12 digits> or <12 digits>)")
            keys.append(str(int(m.group(1))))
    else:
        keys = [f"{i}.jpg" for i in ids]  # the reference sorts file names
    return np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64), order


def single_positive_cole(targets: torch.Tensor | MultiLabelDataset, seed: int = COLE_SEED,
                         ids: Sequence[str] | None = None, order: str = "auto",
                         negatives: bool = False) -> Protocol:
    """One positive per image drawn as the SPML reference code does (Cole et al. 2021,
    ``preproc/generate_observed_labels.py`` with ``--num-pos 1 --num-neg 0``; SPML-AckTheUnknown
    and SigRL reuse the script).

    One ``numpy.random.RandomState(seed)`` (seed 1200 in the reference) is created for the
    split, and its rows are visited in the reference's order (``order``). For each row with at
    least one positive: the indices of its positives are shuffled in place
    (``RandomState.shuffle``) and the first one is kept; then the indices of its other labels
    are shuffled too: with no negative to keep this changes nothing but advances the
    generator, so it is done to stay in step with the reference. Every other label becomes
    unknown (0).

    Rows without a positive draw nothing and stay all-unknown (the reference has no such rows:
    its formatted VOC and COCO splits list only images with a positive); their count is
    recorded as ``num_without_positive``. A label that is not positive (-1 or 0, e.g. VOC
    *difficult*) counts as one of the row's negatives, as the reference reads it.

    ``order``: ``"given"`` (rows as passed), ``"name"`` (sorted by ``<id>.jpg``, the reference's
    VOC order), ``"coco_id"`` (sorted by ``str(int(COCO image id))``, the reference's COCO
    order) or ``"auto"`` (``coco_id`` when every id is a COCO file stem, else ``name``; ``given``
    without ids). The result is always in the input's row order.

    ``negatives=True`` also keeps every true negative (-1): the oracle setting of the IUN
    loss ("ignore unobserved negatives", Cole et al.), which needs to know them. The draw of
    the positive is the same.
    """
    t, ids_ = _source(targets, ids)
    if not 0 <= seed < 2**32:
        raise ValueError(f"single_positive_cole: seed={seed} must be in [0, 2**32)")
    rows, used = _cole_order(ids_, len(t), order)
    rng = np.random.RandomState(seed)
    tn = t.numpy()
    out = np.zeros(tn.shape, dtype=np.int8)
    empty = 0
    for r in rows:
        is_pos = tn[r] == POSITIVE
        pos = np.flatnonzero(is_pos)
        if pos.size == 0:
            empty += 1
            continue
        rng.shuffle(pos)
        out[r, pos[0]] = POSITIVE  # the first positive after the shuffle
        rng.shuffle(np.flatnonzero(~is_pos))  # the reference's (empty) negative draw
    if negatives:
        out[tn == NEGATIVE] = NEGATIVE
    params: dict[str, Any] = {"order": used, **({"negatives": True} if negatives else {})}
    meta: dict[str, Any] = {
        "name": "single_positive_cole", "params": params, "seed": seed,
        "rng": "numpy.random.RandomState(seed).shuffle per row (Cole et al. 2021)",
        "source_targets_sha256": targets_sha256(t), "num_without_positive": empty}
    if ids_ is not None:
        meta["source_ids_sha256"] = ids_sha256(ids_)
    return Protocol(torch.from_numpy(out), meta, ids_)


def zero_shot_split(labels: LabelSpace | Sequence[str],
                    unseen: Sequence[str] | Sequence[int] | torch.Tensor | None = None,
                    num_unseen: int | None = None, seed: int = 0) -> LabelSpace:
    """A label space with seen / unseen masks.

    ``unseen``: class names, indices or a boolean mask; or ``num_unseen`` classes drawn
    uniformly without replacement with ``seed``.
    """
    space = labels if isinstance(labels, LabelSpace) else LabelSpace(tuple(labels))
    c = len(space)
    mask = torch.zeros(c, dtype=torch.bool)
    if unseen is not None:
        if isinstance(unseen, torch.Tensor) and unseen.dtype == torch.bool:
            if unseen.shape != (c,):
                raise ValueError(f"zero_shot_split: mask of length {len(unseen)}, need {c}")
            mask = unseen.clone()
        else:
            for u in list(unseen):
                if isinstance(u, str):
                    mask[space.index(u)] = True
                else:
                    if not 0 <= int(u) < c:
                        raise ValueError(f"zero_shot_split: index {u} out of range 0..{c - 1}")
                    mask[int(u)] = True
    elif num_unseen is not None:
        if not 0 < num_unseen < c:
            raise ValueError(f"zero_shot_split: num_unseen={num_unseen} must be in 1..{c - 1}")
        rng = np.random.Generator(np.random.PCG64(seed))
        mask[torch.from_numpy(rng.choice(c, size=num_unseen, replace=False))] = True
    else:
        raise ValueError("zero_shot_split: pass unseen= (names, indices or mask) or num_unseen=")
    return LabelSpace(space.names, seen=~mask, unseen=mask)


def select_labels(dataset: MultiLabelDataset, mask: torch.Tensor) -> MultiLabelDataset:
    """The dataset restricted to the classes where ``mask`` is true (e.g. ``labels.seen``)."""
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.shape != (len(dataset.labels),):
        raise ValueError(f"select_labels: mask of shape {tuple(mask.shape)}, need "
                         f"({len(dataset.labels)},)")
    new = object.__new__(type(dataset))
    new.__dict__.update(dataset.__dict__)
    new.labels = dataset.labels.subset(mask)
    new.targets = dataset.targets[:, mask].contiguous()
    new.info = dict(dataset.info, label_subset=int(mask.sum()))
    return new


def load_voc_partial(path: str | Path, ids: Sequence[str] | MultiLabelDataset | None = None,
                     num_classes: int = 20) -> Protocol:
    """A published VOC partial-label file: comma-separated rows of 1 / -1 / 0 (unknown).

    Rows are in ``ImageSets/Main/trainval.txt`` order, columns in the standard class order.
    In these files the *difficult* entries that are kept are -1 (negative).
    """
    path = Path(path)
    if isinstance(ids, MultiLabelDataset):
        ids = ids.ids
    rows: list[list[int]] = []
    bad = BadLines(False)
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            vals = [int(v) for v in line.split(",")]
        except ValueError:
            bad.report(f"{path.name}:{lineno}", f"non-integer value in {line[:60]!r}")
            continue
        if len(vals) != num_classes or any(v not in (POSITIVE, NEGATIVE, UNKNOWN) for v in vals):
            bad.report(f"{path.name}:{lineno}", f"expected {num_classes} comma-separated "
                       f"values from 1, -1, 0; got {line[:60]!r}")
        rows.append(vals)
    t = torch.tensor(rows, dtype=torch.int8).reshape(-1, num_classes)
    if ids is not None and len(ids) != len(t):
        raise ProtocolError(f"{path}: {len(t)} rows but the dataset has {len(ids)} images")
    m = re.search(r"(\d+(?:\.\d+)?)", path.stem)
    meta = {"name": "voc_partial_published", "params": {"keep": float(m.group(1)) if m else None},
            "seed": None, "source_file": path.name, "source_file_sha256": file_sha256(path)}
    return Protocol(t, meta, list(ids) if ids is not None else None)


def load_list_protocol(path: str | Path, num_classes: int, unlisted: str = "unknown",
                       name: str | None = None) -> Protocol:
    """A published ``file, idx idx ...`` protocol file (e.g. ``coco_train_0.4left.txt``).

    A listed index is a kept positive. ``unlisted='unknown'`` (default) makes every other
    entry unknown, which is what these files mean (positives dropped at random, negatives
    never annotated); ``'negative'`` reproduces the "assume negative" training targets of the
    code that published them. Ids are the file names without extension.
    """
    path = Path(path)
    files, indices = parse_index_list(path, num_classes, BadLines(False))
    t = targets_from_indices(indices, num_classes, unlisted_value(unlisted))
    ids = [Path(f).stem for f in files]
    meta = {"name": name or f"published:{path.stem}", "params": {"unlisted": unlisted},
            "seed": None, "source_file": path.name, "source_file_sha256": file_sha256(path)}
    return Protocol(t, meta, ids)


def apply_protocol(dataset: MultiLabelDataset, protocol: Protocol,
                   on_conflict: str = "error") -> MultiLabelDataset:
    """The dataset with the protocol's targets, after checking that they belong together.

    Ids must match (same order, or the same set: then rows are aligned by id). Where both
    know a label they must agree (``on_conflict='error'``), unless ``'protocol'`` is passed
    (the protocol's value wins; the count is recorded in ``info``).
    """
    if on_conflict not in ("error", "protocol"):
        raise ValueError("apply_protocol: on_conflict must be 'error' or 'protocol'")
    t = protocol.targets
    what = protocol.meta.get("name", "protocol")
    if t.shape[1] != len(dataset.labels):
        raise ProtocolError(f"{what}: {t.shape[1]} classes but the dataset has "
                            f"{len(dataset.labels)}")
    if protocol.ids is not None:
        if protocol.ids != dataset.ids:
            pos = {i: r for r, i in enumerate(protocol.ids)}
            missing = [i for i in dataset.ids if i not in pos]
            if missing or len(protocol.ids) != len(dataset.ids):
                raise ProtocolError(f"{what}: image ids differ from the dataset's "
                                    f"({len(missing)} dataset ids not in the protocol, e.g. "
                                    f"{missing[:1]}; {len(protocol.ids)} vs {len(dataset)})")
            t = t[torch.tensor([pos[i] for i in dataset.ids])]
    elif "source_ids_sha256" in protocol.meta:
        if protocol.meta["source_ids_sha256"] != ids_sha256(dataset.ids):
            raise ProtocolError(f"{what}: made for other image ids (SHA-256 differs)")
    elif len(t) != len(dataset):
        raise ProtocolError(f"{what}: {len(t)} rows but the dataset has {len(dataset)} images")
    d = dataset.targets
    conflict = (t != UNKNOWN) & (d != UNKNOWN) & (t != d)
    n_conflict = int(conflict.sum())
    if n_conflict and on_conflict == "error":
        r, c = conflict.nonzero()[0].tolist()
        raise ProtocolError(
            f"{what}: {n_conflict} known labels disagree with the dataset (first: image "
            f"{dataset.ids[r]!r}, class {dataset.labels.names[c]!r}: protocol {int(t[r, c])}, "
            f"dataset {int(d[r, c])}); the protocol was made from other labels (for VOC: "
            "another 'difficult' policy). Pass on_conflict='protocol' to use it anyway")
    new = dataset.with_targets(t)
    new.info["protocol"] = {k: protocol.meta.get(k) for k in
                            ("name", "params", "seed", "targets_sha256")}
    new.info["protocol_conflicts"] = n_conflict
    return new


__all__ = ["COLE_ORDERS", "COLE_SEED", "PARTIAL_RNGS", "Protocol", "ProtocolError",
           "apply_protocol", "ids_sha256", "load_list_protocol", "load_voc_partial", "partial",
           "select_labels", "single_positive", "single_positive_cole", "targets_sha256",
           "zero_shot_split"]
