"""mlrkit: multi-label image recognition in one library.

Public face: ``create_model``, ``list_models``, ``load_dataset``, ``evaluate``, ``Predictor``.
"""

from __future__ import annotations

from typing import Any

from .labels import LabelSpace
from .model import MLRModel, create_model, list_models
from .structures import Features, Output, Semantics

__version__ = "0.1.0"

_LAZY = {
    "load_dataset": ("mlrkit.data", "load_dataset"),
    "list_datasets": ("mlrkit.data", "list_datasets"),
    "evaluate": ("mlrkit.metrics", "evaluate"),
    "Predictor": ("mlrkit.predict", "Predictor"),
}


def __getattr__(name: str) -> Any:  # lazy imports keep `import mlrkit` light
    if name in _LAZY:
        from importlib import import_module

        mod, attr = _LAZY[name]
        return getattr(import_module(mod), attr)
    raise AttributeError(f"module 'mlrkit' has no attribute {name!r}")


__all__ = ["Features", "LabelSpace", "MLRModel", "Output", "Semantics", "Predictor",
           "__version__", "create_model", "evaluate", "list_datasets", "list_models",
           "load_dataset"]
