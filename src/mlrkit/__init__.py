"""mlrkit: multi-label image recognition in one library.

Public face: ``create_model``, ``list_models``, ``load_dataset``, ``evaluate``, ``Predictor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The one place the version is written: pyproject.toml reads it from here
# ([tool.setuptools.dynamic]), and `mlrkit --version` prints it.
__version__ = "0.1.0"

# Every public name is imported on first use, so `import mlrkit` (and with it `mlrkit --help`
# and `mlrkit --version`) does not load torch.
_LAZY = {
    "LabelSpace": ("mlrkit.labels", "LabelSpace"),
    "MLRModel": ("mlrkit.model", "MLRModel"),
    "create_model": ("mlrkit.model", "create_model"),
    "list_models": ("mlrkit.model", "list_models"),
    "Features": ("mlrkit.structures", "Features"),
    "Output": ("mlrkit.structures", "Output"),
    "Semantics": ("mlrkit.structures", "Semantics"),
    "load_dataset": ("mlrkit.data", "load_dataset"),
    "list_datasets": ("mlrkit.data", "list_datasets"),
    "evaluate": ("mlrkit.metrics", "evaluate"),
    "Predictor": ("mlrkit.predict", "Predictor"),
}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .data import list_datasets, load_dataset
    from .labels import LabelSpace
    from .metrics import evaluate
    from .model import MLRModel, create_model, list_models
    from .predict import Predictor
    from .structures import Features, Output, Semantics


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        mod, attr = _LAZY[name]
        value = getattr(import_module(mod), attr)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'mlrkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Features", "LabelSpace", "MLRModel", "Output", "Semantics", "Predictor",
           "__version__", "create_model", "evaluate", "list_datasets", "list_models",
           "load_dataset"]
