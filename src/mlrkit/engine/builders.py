"""Turn a ``Config`` into datasets, label semantics, a model and data loaders."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import Config, ConfigError
from ..data import MultiLabelDataset, load_dataset
from ..model import MLRModel, create_model
from ..structures import Features
from .distributed import DistInfo, GlobalBatchSampler


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank)
        return torch.device("cpu")
    return torch.device(name)


def load_split(cfg: Config, which: str) -> MultiLabelDataset:
    spec: dict[str, Any] = dict(getattr(cfg.data, which))
    if "name" not in spec:
        raise ConfigError(f"data.{which}.name: missing (the dataset to load, e.g. voc2007)")
    name = spec.pop("name")
    if cfg.data.skip_bad and "skip_bad" not in spec:
        import inspect

        from ..registry import DATASETS
        if "skip_bad" in inspect.signature(DATASETS.get(name)).parameters:
            spec["skip_bad"] = True
    try:
        ds = load_dataset(name, **spec)
    except TypeError as e:
        raise ConfigError(f"data.{which}: {e}") from None
    if len(ds) == 0:
        at = "root" if spec.get("root") else "labels_file"  # where the images were looked for
        root = spec.get(at) or "(no root given)"
        opts = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k not in (at, "skip_bad"))
        raise ConfigError(f"data.{which}: dataset {name} at {root} has no images "
                          f"({opts + '; ' if opts else ''}check the path, split and filters, "
                          "and that the label file lists images)")
    if isinstance(ds, MultiLabelDataset):
        ds.max_image_pixels = cfg.data.max_image_pixels
        if cfg.data.skip_bad:  # decode every image once; unreadable ones leave the split
            from ..data.base import drop_unreadable_images

            ds = drop_unreadable_images(ds, cfg.data.num_workers, cfg.train.progress)
            if len(ds) == 0:
                raise ConfigError(f"data.{which}: no image of dataset {name} could be read "
                                  f"(first: {ds.info['skipped'][0]})")
    return ds


# data spec keys that take a subset of a split's images (hold-out and cross-validation folds)
SUBSET_KEYS = ("fold", "val_fraction", "fold_seed", "cv_folds", "cv_index", "cv_part")


def load_train_split(cfg: Config) -> MultiLabelDataset:
    """``data.train`` with its training targets under ``data.protocol``.

    A protocol is drawn on the whole split, then the fold's rows are taken: a subset of
    images gets exactly the labels the protocol gives those images in the whole split (the
    published partial-label files and the single-positive reference draws cover every
    training image), and the draw does not depend on which images a fold holds."""
    ds = load_split(cfg, "train")
    if not cfg.data.protocol:
        return ds
    spec = dict(cfg.data.train)
    if not any(spec.get(k) is not None for k in SUBSET_KEYS):
        return apply_protocol(cfg, ds)
    whole_cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, train={k: v for k, v in spec.items() if k not in SUBSET_KEYS}))
    whole = apply_protocol(whole_cfg, load_split(whole_cfg, "train"))
    row = {i: n for n, i in enumerate(whole.ids)}
    missing = [i for i in ds.ids if i not in row]
    if missing:  # pragma: no cover - a fold is a subset of its split
        raise ConfigError(f"data.train: fold image {missing[0]!r} is not in the whole split")
    ds.targets = whole.targets[[row[i] for i in ds.ids]].contiguous()
    ds.info = dict(ds.info, protocol=dict(whole.info.get("protocol", {}),
                                          drawn_on=f"the whole split ({len(whole)} images)"))
    return ds


def apply_protocol(cfg: Config, ds: MultiLabelDataset) -> MultiLabelDataset:
    """Replace training targets by a label protocol: a saved file, ``single_positive`` (run's
    seed), or a partial-label spec:

    - ``partial:<keep>``: ``Generator(PCG64)`` with the run's seed;
    - ``partial:<keep>:legacy``: NumPy's legacy generator with seed 0, whatever the run's
      seed (the published VOC2007 ``train_proportion_*`` files);
    - ``partial:<keep>:legacy:<seed>``: the legacy generator with another seed;
    - ``single_positive:cole``: the SPML reference sampling (``single_positive_cole``) with
      its seed 1200, whatever the run's seed; ``single_positive:cole:<seed>`` another seed;
      an optional part ``given``, ``name`` or ``coco_id`` sets the row order (default
      ``auto``); a last part ``negatives`` keeps the true negatives (IUN's oracle setting).
    """
    spec = cfg.data.protocol
    if not spec:
        return ds
    from ..data import protocols

    if spec.startswith("partial:"):
        forms = "partial:<keep>, partial:<keep>:legacy or partial:<keep>:legacy:<seed>"
        parts = spec.split(":")[1:]
        try:
            keep = float(parts[0])
        except ValueError:
            raise ConfigError(f"data.protocol: bad keep fraction {parts[0]!r} in {spec!r} "
                              f"(expected {forms})") from None
        if not 0.0 <= keep <= 1.0:
            raise ConfigError(f"data.protocol: keep fraction {parts[0]} in {spec!r} must be "
                              "in [0, 1]")
        rng, seed = "pcg64", cfg.seed
        if len(parts) > 1:
            if parts[1] != "legacy" or len(parts) > 3:
                raise ConfigError(f"data.protocol: malformed spec {spec!r} (expected {forms})")
            rng, seed = "legacy", 0
            if len(parts) == 3:
                s = parts[2]
                if not (s.isascii() and s.isdigit()) or int(s) >= 2**32:
                    raise ConfigError(f"data.protocol: seed {s!r} in {spec!r} must be an "
                                      "integer in [0, 2**32) (legacy generator)")
                seed = int(s)
        proto = protocols.partial(ds.targets, keep=keep, seed=seed, rng=rng)
    elif spec == "single_positive":
        proto = protocols.single_positive(ds.targets, seed=cfg.seed)
    elif spec == "single_positive:cole" or spec.startswith("single_positive:cole:"):
        forms = ("single_positive:cole, single_positive:cole:<seed>, with optional last "
                 f"parts {', '.join(protocols.COLE_ORDERS)} and negatives")
        parts = spec.split(":")[2:]
        seed, order = protocols.COLE_SEED, "auto"
        negatives = bool(parts) and parts[-1] == "negatives"
        if negatives:
            parts.pop()
        if parts and parts[-1] in protocols.COLE_ORDERS:
            order = parts.pop()
        if len(parts) > 1:
            raise ConfigError(f"data.protocol: malformed spec {spec!r} (expected {forms})")
        if parts:
            s = parts[0]
            if not (s.isascii() and s.isdigit()) or int(s) >= 2**32:
                raise ConfigError(f"data.protocol: seed {s!r} in {spec!r} must be an integer "
                                  f"in [0, 2**32) (expected {forms})")
            seed = int(s)
        proto = protocols.single_positive_cole(ds, seed=seed, order=order, negatives=negatives)
    else:
        proto = protocols.Protocol.load(spec)
    return protocols.apply_protocol(ds, proto)


def unseen_mask(cfg: Config, names: list[str]) -> torch.Tensor | None:
    """``data.unseen`` as a boolean mask over ``names`` (None when the run is not zero-shot).

    The setting is a list of class names or a text file with one name per line."""
    spec = cfg.data.unseen
    if spec is None:
        return None
    where = "data.unseen"
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"data.unseen: {path}: file of unseen label names not found")
        where = f"data.unseen ({path})"
        spec = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()
                if ln.strip()]
    from ..data.protocols import zero_shot_split

    known = set(names)
    missing = [n for n in spec if n not in known]
    if missing:
        raise ConfigError(f"{where}: {len(missing)} name(s) not among the dataset's "
                          f"{len(names)} classes: {', '.join(map(repr, missing[:5]))}")
    mask = zero_shot_split(names, unseen=list(spec)).unseen
    if not mask.any() or mask.all():
        raise ConfigError(f"{where}: needs at least one unseen and one seen class "
                          f"(got {int(mask.sum())} unseen of {len(names)})")
    return mask


def build_semantics(cfg: Config, train: MultiLabelDataset,
                    all_names: list[str] | None = None) -> dict[str, torch.Tensor | None]:
    """Label embeddings (C, E) and label graph (C, C) named by the model config.

    Zero-shot runs pass ``all_names`` (seen and unseen): the embeddings of all of them are
    computed once and kept as ``label_bank`` (saved with the checkpoint, so evaluation and
    prediction can score the unseen labels); the model gets the rows of ``train``'s
    classes. The graph comes from ``train``'s targets only."""
    emb = graph = bank = None
    names = list(train.labels.names)
    if cfg.model.label_embeddings:
        from ..semantics.embeddings import embedding_options, label_embeddings

        opts = embedding_options(cfg.model)
        if all_names is not None:
            bank = label_embeddings(cfg.model.label_embeddings, all_names, **opts)
            pos = {n: i for i, n in enumerate(all_names)}
            emb = bank[[pos[n] for n in names]]
        else:
            emb = label_embeddings(cfg.model.label_embeddings, names, **opts)
    elif all_names is not None:
        raise ConfigError("data.unseen: a zero-shot run needs model.label_embeddings (how "
                          "the unseen labels are described to the model)")
    if cfg.model.label_graph:
        from ..semantics.graphs import label_graph

        graph = label_graph(cfg.model.label_graph, train.targets, names)
    out: dict[str, torch.Tensor | None] = {"embeddings": emb, "graph": graph}
    if bank is not None:
        out["label_bank"] = bank
    return out


def build_model(cfg: Config, num_classes: int, semantics: dict[str, torch.Tensor | None],
                pretrained: bool | str | None = None,
                class_names: list[str] | None = None) -> MLRModel:
    from ..model import UnknownOptionError

    m = cfg.model
    try:
        model = create_model(
            m.name, backbone=m.backbone,
            pretrained=m.pretrained if pretrained is None else pretrained,
            num_classes=num_classes, label_embeddings=semantics.get("embeddings"),
            label_graph=semantics.get("graph"),
            freeze_backbone=m.freeze_backbone or cfg.data.cache, class_names=class_names,
            **m.options)
    except UnknownOptionError as e:
        raise ConfigError(f"model.{e}") from None
    if m.prior_bias:
        try:
            model.add_prior_bias()
        except ValueError as e:
            raise ConfigError(f"model.prior_bias: {e}") from None
    if m.backbone_trainable is not None and not (m.freeze_backbone or cfg.data.cache):
        model.backbone.freeze_except(m.backbone_trainable)
    return model


def image_transform(cfg: Config, model: MLRModel, train: bool):
    from ..data.transforms import transform_for

    prep = dataclasses.replace(model.backbone.preprocessing, image_size=cfg.data.image_size)
    return transform_for(prep, train=train, **(cfg.data.augment if train else {}))


class IndexedDataset(Dataset):
    """Yields ``(input, target, index, real)`` for the ``(index, real)`` pairs of a
    ``GlobalBatchSampler``, so predictions go back in dataset order and padding rows
    (``real=False``) can be left out."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, bool]):
        i, real = key if isinstance(key, tuple) else (key, True)
        x, y = self.base[i]
        return x, y, i, real


def cached_dataset(cfg: Config, model: MLRModel, ds: MultiLabelDataset, device: torch.device,
                   info: DistInfo) -> Dataset:
    """Frozen-backbone features of ``ds`` from the feature cache, extracting them if needed."""
    from ..data import cache as fc

    transform = image_transform(cfg, model, train=False)
    key = fc.cache_key(model.backbone, ds, transform)  # names the backbone's actual weights
    path = Path(cfg.data.cache_dir) / fc.cache_name(key)
    if info.is_main:  # returns the published cache at once when it matches
        dtype = getattr(torch, cfg.data.cache_dtype)
        fc.extract_features(model.backbone.to(device), ds, path, batch_size=cfg.data.batch_size,
                            num_workers=cfg.data.num_workers, dtype=dtype,
                            transform=transform, progress=cfg.train.progress, device=device)
    if info.enabled:
        torch.distributed.barrier()
    feats = fc.FeatureCacheDataset(fc.FeatureCache.open(path, expected_key=key))
    if feats.ids != list(ds.ids):
        raise RuntimeError(f"{path}: feature cache rows do not follow the dataset's images")
    feats.targets = ds.targets  # the key covers the images only; labels come from the dataset
    return feats


def make_loader(ds: Dataset, batch_size: int, train: bool, info: DistInfo, seed: int,
                num_workers: int) -> tuple[DataLoader, GlobalBatchSampler]:
    """A loader whose global batches are the same for 1 process and for N ranks together
    (``batch_size`` is the global batch): one permutation seeded by (seed, epoch), cut into
    global batches, each shared out ``rank::world`` (``GlobalBatchSampler``)."""
    sampler = GlobalBatchSampler(len(ds), batch_size, info.world_size, info.rank,  # type: ignore[arg-type]
                                 shuffle=train, seed=seed)
    loader = DataLoader(IndexedDataset(ds), batch_sampler=sampler, num_workers=num_workers,
                        persistent_workers=False, pin_memory=False)
    return loader, sampler


def as_model_input(x: torch.Tensor, cached: bool) -> torch.Tensor | Features:
    return Features(map=x.float()) if cached else x
