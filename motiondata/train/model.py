"""The slim model: a transformer over what is observed at the anchor, and one head per target (heads.py).

Inputs are recipe fields of ``K`` rows each (``(B, K, ...)`` with ``<field>.pad``); every row becomes tokens
by the rank of its shape:

- ``(C, h, w)`` (VAE latents): ``patch x patch`` patches of each latent frame, one token each;
- ``(P, E)`` (patch tokens of an image encoder): P tokens;
- ``(E,)`` (text embedding, state, one past action): one token.

Each input is normalised by its training mean and std (buffers filled before training), projected to
``d_model`` and tagged with a learned field and row embedding. Padded rows and fields a sample lacks
(``.present``) are masked out of attention, so a video sample without state or past actions is
encoded from what it has. A [CLS] token gives the pooled embedding every head reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from motiondata.train.heads import ActionHead, CodesHead, FastHead, FlowHead, Normaliser, RegressionHead, rows

HEADS = ("zm", "flow", "fast", "keyframes", "actions")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model (saved in checkpoints); shapes come from the store."""

    inputs: list[dict[str, Any]]  # {"field", "rows", "shape"} per observed field
    heads: dict[str, dict[str, Any]]  # head -> {"field", "rows", "shape"} (+ "valid" for flow)
    fast_vocab: int = 2048
    keyframe_codes: int = 1024
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    patch: int = 2
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def field_spec(batch: dict[str, Any], name: str) -> dict[str, Any]:
    """``{"field", "rows", "shape"}`` of a collated field (a windowed store's field is one row)."""
    shape = [int(s) for s in batch[name].shape[1:]]
    if f"{name}.pad" not in batch:
        return {"field": name, "rows": 1, "shape": shape}
    return {"field": name, "rows": shape[0], "shape": shape[1:]}


def _patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, ceil(h/p) * ceil(w/p), C * p * p), zero-padding h and w to multiples of p."""
    n, c, h, w = latents.shape
    latents = F.pad(latents, (0, (-w) % p, 0, (-h) % p))
    hp, wp = latents.shape[-2] // p, latents.shape[-1] // p
    x = latents.reshape(n, c, hp, p, wp, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, hp * wp, c * p * p)


class InputTokens(nn.Module):
    """One observed field -> ``(B, tokens, d)`` and a ``(B, tokens)`` mask of real tokens."""

    def __init__(self, spec: dict[str, Any], d: int, patch: int):
        super().__init__()
        self.field, self.k, self.shape, self.patch = spec["field"], spec["rows"], spec["shape"], patch
        self.norm = Normaliser(self.shape)
        if len(self.shape) == 3:  # latent frames
            c, h, w = self.shape
            per_row = math.ceil(h / patch) * math.ceil(w / patch)
            self.proj = nn.Linear(c * patch * patch, d)
            self.pos = nn.Parameter(torch.randn(1, 1, per_row, d) * 0.02)
        else:
            width = self.shape[-1] if self.shape else 1
            self.proj = nn.Linear(width, d)
            self.pos = nn.Parameter(torch.randn(1, 1, self.shape[0] if len(self.shape) == 2 else 1, d) * 0.02)
        self.row = nn.Parameter(torch.randn(1, self.k, 1, d) * 0.02)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        values, mask = rows(batch, self.field)
        x = self.norm(values)  # (B, K, *shape)
        b = x.shape[0]
        if len(self.shape) == 3:
            x = _patchify(x.flatten(0, 1), self.patch).reshape(b, self.k, -1, self.proj.in_features)
        else:
            x = x.reshape(b, self.k, -1, self.proj.in_features)
        x = self.proj(x) + self.pos + self.row  # (B, K, T, d)
        real = mask[:, :, None].expand(x.shape[:3])
        return x.flatten(1, 2), real.flatten(1)


class LatentMotionModel(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        d = spec.d_model
        self.inputs = nn.ModuleList([InputTokens(s, d, spec.patch) for s in spec.inputs])
        self.kind = nn.Parameter(torch.randn(len(spec.inputs), d) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        layer = nn.TransformerEncoderLayer(d, spec.n_heads, 4 * d, spec.dropout, batch_first=True, norm_first=True)
        self.trunk = nn.TransformerEncoder(layer, spec.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict()
        for name, head in spec.heads.items():
            self.heads[name] = {"zm": lambda: RegressionHead(head, d), "flow": lambda: FlowHead(head, d),
                                "fast": lambda: FastHead(head, spec.fast_vocab, d),
                                "keyframes": lambda: CodesHead(head, spec.keyframe_codes, d),
                                "actions": lambda: ActionHead(head, d)}[name]()

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        """Pooled (B, d) embedding of the observed fields."""
        parts, masks = [], []
        for i, tokens in enumerate(self.inputs):
            if tokens.field in batch:  # a batch may lack an optional input altogether
                x, real = tokens(batch)
                parts.append(x + self.kind[i])
                masks.append(real)
        b = parts[0].shape[0] if parts else 1
        x = torch.cat([self.cls.expand(b, -1, -1)] + parts, dim=1)
        real = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device)] + masks, dim=1)
        x = self.trunk(x, src_key_padding_mask=~real)
        return self.norm(x[:, 0])

    def forward(self, batch: dict[str, Any]) -> dict[str, tuple[torch.Tensor, int]]:
        """``head -> (loss, rows)`` for the heads whose target field the batch holds (a float32 loss over
        real rows only; ``rows`` = how many real target rows it saw)."""
        pooled = self.embed(batch)
        return {name: head(pooled, batch) for name, head in self.heads.items() if head.field in batch}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, dict[str, tuple[float, int]]]:
        pooled = self.embed(batch)
        return {name: head.evaluate(pooled, batch) for name, head in self.heads.items() if head.field in batch}

    def normalisers(self) -> dict[str, Normaliser]:
        """Field name -> the normaliser whose statistics the trainer fills before step 0."""
        out = {t.field: t.norm for t in self.inputs}
        out.update({h.field: h.norm for h in self.heads.values() if hasattr(h, "norm")})
        return out
