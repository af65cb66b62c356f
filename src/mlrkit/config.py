"""Run configuration: dataclasses, YAML in/out, ``_base_`` composition and dotted ``--set``
overrides.

Unknown keys and values of the wrong type raise ``ConfigError`` naming the file and key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem; the message names the file and key."""


@dataclass
class ModelConfig:
    name: str = "baseline"
    backbone: str = "efficientnet_lite0"
    pretrained: bool | str = True
    freeze_backbone: bool = False
    # backbone parameters that train, by name prefix inside the backbone (e.g. [body.layer4]:
    # only ResNet's last stage, as SSGRL's release); null: all of them
    backbone_trainable: list[str] | None = None
    label_embeddings: str | None = None  # "glove50", "minilm", or a .pkl/.npy/.txt path
    label_graph: str | None = None  # "cooccurrence", "cosine:<source>", or an adj .pkl path
    # "clip:<tower>" label embeddings: the prompt template ("{}" = the label name; null: the
    # SigRL / MKT code's "There is a {} in the scene") and the CLIP weight file of the text
    # tower (null: model.pretrained when the backbone is that tower, else open_clip's)
    label_template: str | None = None
    label_weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # method options
    # a learnable per-class logit offset, started at the log-odds of each class's frequency
    # in the training labels (docs/methods.md, "Small data: the prior bias ..."); closed
    # label sets only
    prior_bias: bool = False


@dataclass
class DataConfig:
    # Each of train / val holds the arguments of mlrkit.load_dataset(name, root=, split=, ...).
    train: dict[str, Any] = field(default_factory=dict)
    val: dict[str, Any] = field(default_factory=dict)
    image_size: int = 448
    batch_size: int = 16
    eval_batch_size: int = 0  # 0: same as batch_size
    num_workers: int = 2
    cache: bool = False  # train a head from cached frozen-backbone features
    cache_dir: str = ".cache/features"
    cache_dtype: str = "float16"
    protocol: str | None = None  # label protocol of the training targets: a file or a spec
    augment: dict[str, Any] = field(default_factory=dict)  # randaugment, cutout, ...
    skip_bad: bool = False  # skip bad label lines and unreadable images, listing them
    # Pillow's decompression-bomb limit in pixels (an image over twice it is refused);
    # null: Pillow's default (89.5 M), 0: no limit
    max_image_pixels: int | None = None
    # zero-shot: labels kept out of training (a list of class names, or a text file with one
    # name per line); the model trains and validates on the other (seen) labels, and eval
    # reports ZSL (unseen labels) and GZSL (all labels) next to the usual metrics
    unseen: list[str] | str | None = None


@dataclass
class LossTerm:
    """A further loss term added to the main loss: ``weight * loss(student, teacher)``.

    ``student`` / ``teacher`` name what is compared: ``logits`` or a key of the head's
    ``Output.extras`` (e.g. ``global_feature``). ``teacher_model``: ``initial`` = a frozen
    copy of the model as built, before any training step (SigRL eq. 16: the pretrained
    CLIP image tower); ``none`` = the teacher value comes from the trained model's own
    output (a term on two of its outputs)."""

    name: str = "l1_distill"
    weight: float = 1.0
    student: str = "global_feature"
    teacher: str = "global_feature"
    teacher_model: str = "initial"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "bce"
    options: dict[str, Any] = field(default_factory=dict)
    terms: list[LossTerm] = field(default_factory=list)  # further terms (distillation, ...)


@dataclass
class OptimConfig:
    name: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    backbone_lr_mult: float = 1.0
    # lr multipliers by parameter-name prefix (longest prefix wins; over backbone_lr_mult),
    # e.g. {backbone.visual.transformer.resblocks.11: 0.65} for layer-wise decay
    lr_mult: dict[str, float] = field(default_factory=dict)
    no_decay_1d: bool = False  # no weight decay on 1-D parameters (biases, norm scales)


@dataclass
class SchedConfig:
    name: str = "none"  # none | step | cosine | onecycle | plateau
    step_size: int = 10
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    pct_start: float = 0.2
    factor: float = 0.1
    patience: int = 2


@dataclass
class TrainConfig:
    epochs: int = 10
    grad_clip: float = 0.0
    # auto | none | bf16 | fp16; auto: bf16 on a GPU that has it (else fp16), bf16 on a CPU
    # with native bf16 matmuls (AVX512-BF16 / AMX / Arm BF16), else none (engine/precision.py)
    amp: str = "auto"
    ema: float = 0.0  # decay of the weight EMA; 0 disables it
    ema_warmup: bool = True  # decay min(ema, (1 + t) / (10 + t)) at update t
    early_stop: int = 0  # epochs without mAP improvement before stopping; 0 disables it
    device: str = "auto"
    progress: bool = True  # progress bars and one line per epoch
    log: str = "csv"  # csv (log.csv, always written) | tensorboard (also RUN_DIR/tensorboard)


@dataclass
class EvalConfig:
    threshold: float = 0.5
    # per_class: each checkpoint stores per-class thresholds that maximize F1 on the
    # validation split (used by eval and predict); fixed: `threshold` for every class
    thresholds: str = "per_class"
    top_k: int = 0
    ap_mode: str = "sklearn"
    # also report the single-positive (SPML) metrics of SigRL / Cole et al.: mAP with empty
    # classes as 0, per-image P@3/R@3/F1@3 and @5 (mlrkit.metrics.spml_metrics)
    spml: bool = False


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


_ENUMS = {
    "optim.name": ("sgd", "adam", "adamw"),
    "sched.name": ("none", "step", "cosine", "onecycle", "plateau"),
    "train.amp": ("auto", "none", "bf16", "fp16"),
    "train.log": ("csv", "tensorboard"),
    "eval.ap_mode": ("sklearn", "voc", "voc11"),
    "eval.thresholds": ("per_class", "fixed"),
    "data.cache_dtype": ("float16", "float32", "bfloat16"),
    "LossTerm.teacher_model": ("initial", "none"),
}


# Numeric limits: key -> ((comparison, bound), ...); every one must hold.
_BOUNDS: dict[str, tuple[tuple[str, float], ...]] = {
    "seed": ((">=", 0),),
    "data.image_size": ((">=", 1),),
    "data.batch_size": ((">=", 1),),
    "data.eval_batch_size": ((">=", 0),),
    "data.num_workers": ((">=", 0),),
    "data.max_image_pixels": ((">=", 0),),
    "optim.lr": ((">=", 0),),
    "optim.weight_decay": ((">=", 0),),
    "optim.momentum": ((">=", 0),),
    "optim.backbone_lr_mult": ((">=", 0),),
    "sched.step_size": ((">=", 1),),
    "sched.gamma": ((">", 0),),
    "sched.warmup_epochs": ((">=", 0),),
    "sched.min_lr": ((">=", 0),),
    "sched.pct_start": ((">=", 0), ("<=", 1)),
    "sched.factor": ((">", 0), ("<", 1)),
    "sched.patience": ((">=", 0),),
    "train.epochs": ((">=", 1),),
    "train.grad_clip": ((">=", 0),),
    "train.ema": ((">=", 0), ("<", 1)),
    "train.early_stop": ((">=", 0),),
    "eval.threshold": ((">", 0), ("<", 1)),
    "eval.top_k": ((">=", 0),),
}
_COMPARE = {">=": lambda v, b: v >= b, ">": lambda v, b: v > b,
            "<=": lambda v, b: v <= b, "<": lambda v, b: v < b}


def _check_bounds(key: str, value: Any) -> None:
    rules = _BOUNDS.get(key)
    if rules and value is not None and not all(_COMPARE[op](value, bound)
                                                for op, bound in rules):
        limits = " and ".join(f"{op} {bound:g}" for op, bound in rules)
        raise ConfigError(f"{key}: must be {limits}, got {value!r}")


def _check_value(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _check_value(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        names = " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(tp))
        raise ConfigError(f"{key}: expected {names}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_check_value(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"{key}: unknown key; allowed: {', '.join(sorted(names))}")
        kwargs[k] = _check_value(v, hints[k], key)
        enum = _ENUMS.get(key) or _ENUMS.get(f"{cls.__name__}.{k}")
        if enum and kwargs[k] not in enum:
            raise ConfigError(f"{key}: {kwargs[k]!r} is not one of {', '.join(enum)}")
        _check_bounds(key, kwargs[k])
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _from_dict(Config, data)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is already set to a value")
        node[parts[-1]] = value
    return out


DELETE_KEY = "_delete_"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``, mappings key by key; a mapping in ``over`` holding
    ``_delete_: true`` replaces the one in ``base`` instead (e.g. a loss with other options)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and v.get(DELETE_KEY) is True:
            out[k] = _drop_delete(v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = _drop_delete(v) if isinstance(v, dict) else v
    return out


def _drop_delete(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` without its ``_delete_`` markers (at any depth)."""
    return {k: _drop_delete(v) if isinstance(v, dict) else v
            for k, v in d.items() if k != DELETE_KEY}


BASE_KEY = "_base_"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return loaded


def _base_paths(path: Path, value: Any) -> list[Path]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"{path}: {BASE_KEY}: expected a config path or a list of them "
                          f"(relative to this file's folder), got {value!r}")
    return [Path(os.path.normpath(path.parent / v)) for v in items]


def _compose(path: Path, chain: tuple[tuple[Path, Path], ...] = ()) -> dict[str, Any]:
    """The keys of ``path`` deep-merged over those of its ``_base_`` configs (each composed
    the same way, in order, later ones over earlier ones). Each file's own keys are checked
    on their own first, so an unknown key or a bad value is named with the file it is in.
    ``chain``: the (shown, resolved) paths of the files that led here."""
    real = path.resolve()
    if any(real == r for _, r in chain):
        loop = " -> ".join(str(shown) for shown, _ in (*chain, (path, real)))
        raise ConfigError(f"{path}: {BASE_KEY} cycle: {loop}")
    own = _read_yaml(path)
    bases = own.pop(BASE_KEY, None)
    try:
        config_from_dict(_drop_delete(own))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if bases is None:
        return _drop_delete(own)
    merged: dict[str, Any] = {}
    for base in _base_paths(path, bases):
        if not base.is_file():
            raise ConfigError(f"{path}: {BASE_KEY}: {base}: config file not found")
        merged = deep_merge(merged, _compose(base, (*chain, (path, real))))
    return deep_merge(merged, own)


def compose_config(path: str | Path) -> dict[str, Any]:
    """The keys a config file sets, its ``_base_`` configs' merged under its own: the mapping
    ``load_config`` validates, before defaults and ``--set`` overrides (no ``_base_`` key)."""
    return _compose(Path(path))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or start from ``base``), apply ``--set`` overrides, validate.

    A config may name others under ``_base_`` (a path relative to its own folder, or a list
    of them): those are read first (recursively; a cycle is an error naming the files), the
    file's own keys are deep-merged over them, then the overrides. The result holds no
    ``_base_``: a run's ``config.yaml`` is the merged config.
    """
    data: dict[str, Any] = dict(base or {})
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        data = deep_merge(data, _compose(path))
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        where += " (with --set)"
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
