"""Label spaces and the target convention shared by every dataset, loss and metric.

Targets are ``(N, C)`` ``int8`` tensors: ``1`` positive, ``-1`` negative, ``0`` unknown.
Full labels contain no ``0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

POSITIVE, NEGATIVE, UNKNOWN = 1, -1, 0


@dataclass(frozen=True)
class LabelSpace:
    """Ordered class names with optional zero-shot masks.

    ``seen`` / ``unseen`` are boolean tensors of length C; by default every class is seen.
    """

    names: tuple[str, ...]
    seen: torch.Tensor = field(default=None)  # type: ignore[assignment]
    unseen: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        object.__setattr__(self, "names", names)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"LabelSpace: duplicate class names {dup}")
        c = len(names)
        seen = torch.ones(c, dtype=torch.bool) if self.seen is None else torch.as_tensor(
            self.seen, dtype=torch.bool)
        unseen = ~seen if self.unseen is None else torch.as_tensor(self.unseen, dtype=torch.bool)
        if seen.shape != (c,) or unseen.shape != (c,):
            raise ValueError(f"LabelSpace: seen/unseen masks must have length {c}")
        object.__setattr__(self, "seen", seen)
        object.__setattr__(self, "unseen", unseen)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown class name {name!r}; known: {', '.join(self.names)}") from None

    def subset(self, mask: torch.Tensor) -> LabelSpace:
        """The label space restricted to the classes where ``mask`` is true."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        idx = mask.nonzero().flatten().tolist()
        return LabelSpace(tuple(self.names[i] for i in idx), self.seen[mask], self.unseen[mask])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSpace) and self.names == other.names and bool(
            torch.equal(self.seen, other.seen)) and bool(torch.equal(self.unseen, other.unseen))

    def __hash__(self) -> int:
        return hash(self.names)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> LabelSpace:
        return cls(tuple(names))


def validate_targets(targets: torch.Tensor, num_classes: int | None = None,
                     name: str = "targets") -> torch.Tensor:
    """Check the target convention; return ``targets`` as int8, else raise ``ValueError``."""
    t = torch.as_tensor(targets)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape (N, C), got {tuple(t.shape)}")
    if num_classes is not None and t.shape[1] != num_classes:
        raise ValueError(f"{name}: expected {num_classes} classes, got {t.shape[1]}")
    if t.is_floating_point() and not torch.all(t == t.round()):
        raise ValueError(f"{name}: values must be 1, 0 or -1")
    bad = (t != 1) & (t != 0) & (t != -1)
    if bool(bad.any()):
        r, c = bad.nonzero()[0].tolist()
        raise ValueError(f"{name}: value {t[r, c].item()} at row {r}, column {c}; "
                         "allowed values are 1 (positive), -1 (negative), 0 (unknown)")
    return t.to(torch.int8)


def from_indices(indices: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """Full targets (1 / -1) from per-image lists of positive class indices."""
    out = torch.full((len(indices), num_classes), NEGATIVE, dtype=torch.int8)
    rows = [i for i, idx in enumerate(indices) for _ in idx]
    cols = [j for idx in indices for j in idx]
    if cols:
        out[torch.tensor(rows), torch.tensor(cols)] = POSITIVE
    return out
