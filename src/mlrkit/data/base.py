"""Dataset contract shared by every loader.

A dataset has ``.targets`` ((N, C) int8: 1 / -1 / 0), ``.ids`` (N image ids), ``.labels``
(a ``LabelSpace``) and ``.transform``; ``ds[i]`` returns ``(image, target)`` where ``image``
is the transformed image (a tensor once a transform is set) and ``target`` the int8 row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..io import open_rgb
from ..labels import LabelSpace, validate_targets


class DataError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


class MultiLabelDataset(Dataset):
    """Images on disk (``paths``) with targets in the mlrkit convention."""

    def __init__(self, paths: Sequence[str | Path] | None, targets: torch.Tensor,
                 labels: LabelSpace, ids: Sequence[str] | None = None,
                 transform: Callable[[Any], Any] | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.targets = validate_targets(targets, len(labels))
        self.labels = labels
        self.paths = [Path(p) for p in paths] if paths is not None else None
        if self.paths is not None and len(self.paths) != len(self.targets):
            raise DataError(f"{len(self.paths)} images but {len(self.targets)} label rows")
        self.ids = list(ids) if ids is not None else [Path(p).stem for p in (self.paths or [])]
        if len(self.ids) != len(self.targets):
            raise DataError(f"{len(self.ids)} ids but {len(self.targets)} label rows")
        self.transform = transform
        self.info: dict[str, Any] = dict(info or {})  # recorded choices (difficult=..., ...)

    def __len__(self) -> int:
        return len(self.targets)

    def load_image(self, i: int) -> Image.Image:
        if self.paths is None:
            raise DataError("this dataset has labels only (no image files)")
        try:
            return open_rgb(self.paths[i])
        except (FileNotFoundError, ValueError) as e:
            raise DataError(str(e)) from None

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        img = self.load_image(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]

    def subset(self, indices: Sequence[int]) -> MultiLabelDataset:
        """A copy holding only the rows ``indices`` (in that order); datasets that make
        their images from the index override this."""
        idx = [int(i) for i in indices]
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.targets = self.targets[torch.as_tensor(idx, dtype=torch.long)]
        new.ids = [self.ids[i] for i in idx]
        new.paths = [self.paths[i] for i in idx] if self.paths is not None else None
        new.info = dict(self.info)
        return new

    def with_targets(self, targets: torch.Tensor) -> MultiLabelDataset:
        """A copy sharing images and ids but with other targets (e.g. a label protocol)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.targets = validate_targets(targets, len(self.labels))
        if len(new.targets) != len(self):
            raise DataError(f"protocol has {len(new.targets)} rows, dataset {len(self)}")
        new.info = dict(self.info)
        return new
