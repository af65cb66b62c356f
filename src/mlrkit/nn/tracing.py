"""Whether code runs under a tracer or compiler (TorchScript, torch.compile, torch.export)."""

from __future__ import annotations

import torch


def tracing() -> bool:
    """True inside ``torch.jit`` tracing / scripting, ``torch.compile`` and ``torch.export``.

    Eager-only shortcuts (a BatchNorm-folded copy of a backbone, a cache of text features
    keyed by tensor addresses) step aside there, so exported graphs hold the plain
    computation."""
    compiler = getattr(torch, "compiler", None)
    return bool(torch.jit.is_scripting() or torch.jit.is_tracing()
                or (compiler is not None and (compiler.is_compiling()
                                              or getattr(compiler, "is_exporting",
                                                         lambda: False)())))
