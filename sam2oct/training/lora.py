"""Low-rank adapters (LoRA) on nn.Linear layers, and folding them back into plain weights.

An adapted layer computes ``W x + b + scale * B (A x)`` with ``A`` [r, in] random and ``B``
[out, r] zero, so a freshly adapted model computes exactly what the base model did. After
training, :func:`merge_lora` folds ``W + scale * B @ A`` into an ordinary nn.Linear in place of
each wrapper: the model's state dict then has the base checkpoint's keys and shapes again.

Hand-written rather than peft: peft pulls in transformers and accelerate, imports torchvision
(which fails to import on CPU-only installs here), and we need a few dozen lines of it.
"""

import math
import re

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, generator=None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scale = (rank if alpha is None else alpha) / rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        # The same init nn.Linear gives its own weight; B = 0 keeps the output unchanged.
        bound = 1 / math.sqrt(base.in_features)
        with torch.no_grad():
            self.lora_a.uniform_(-bound, bound, generator=generator)
        for p in base.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + self.scale * (self.lora_b @ self.lora_a)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with the update folded in (same dtype and device as the base)."""
        w = self.base.weight
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            # Fold in float64 so the merged weight is the sum rounded once.
            delta = self.lora_b.double() @ self.lora_a.double()
            out.weight.copy_((w.double() + self.scale * delta).to(w.dtype))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _parent(model: nn.Module, name: str):
    owner, _, attr = name.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attr


def add_lora(model: nn.Module, pattern: str, rank: int, alpha: float | None = None, generator=None) -> list:
    """Wrap every nn.Linear whose qualified name fully matches the regex ``pattern``.

    Returns the wrapped names (sorted). Raises ValueError when nothing matched, so a pattern
    that no longer fits the network is noticed instead of silently training nothing.
    """
    regex = re.compile(pattern)
    names = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and regex.fullmatch(n))
    if not names:
        raise ValueError(f"no nn.Linear layer matches {pattern!r}")
    for name in names:
        owner, attr = _parent(model, name)
        setattr(owner, attr, LoRALinear(getattr(owner, attr), rank, alpha, generator))
    return names


def lora_parameters(model: nn.Module) -> list:
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear in ``model`` by its merged nn.Linear; returns how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        owner, attr = _parent(model, name)
        setattr(owner, attr, getattr(owner, attr).merged())
    return len(names)
