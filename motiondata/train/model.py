"""A small latent-motion model: a transformer over VAE latent patches + the text embedding, with one
head per target the store holds.

Inputs: ``vae.latents`` (B, C, T', h, w), cut into ``patch x patch`` tokens of one latent frame each,
and ``text.embedding`` (B, E) as one extra token; a learned [CLS] token gives the pooled embedding.

Heads (each returns a float32 loss; ``HEAD_FIELDS`` says what each needs):
- ``zm``: ``motion.zm`` (C, T'-1, W'+H') regression from the pooled embedding, MSE;
- ``flow``: ``flow.tracks`` (P, S, 3), one learned query per track point, MSE masked by ``flow.valid``;
- ``fast``: ``fast.tokens`` autoregressive cross-entropy: a GRU decoder whose first state is the pooled
  embedding, teacher-forced from a BOS token, ending with an EOS token;
- ``keyframes``: ``keyframes.codes`` (K, h, w), one learned query per code position, cross-entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HEAD_FIELDS = {
    "zm": ("motion.zm",),
    "flow": ("flow.tracks", "flow.valid"),
    "fast": ("fast.tokens",),
    "keyframes": ("keyframes.codes",),
}
INPUT_FIELDS = ("vae.latents", "text.embedding")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model; shapes come from the store (saved in checkpoints)."""

    latent_shape: list[int]  # (C, T', h, w)
    text_dim: int  # 0 when the store has no text.embedding
    heads: list[str]
    zm_shape: list[int] | None = None
    flow_shape: list[int] | None = None  # (P, S, 3)
    keyframe_shape: list[int] | None = None  # (K, h, w)
    fast_vocab: int = 2048
    keyframe_codes: int = 1024
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    patch: int = 2
    dropout: float = 0.0


def spec_from_batch(batch: dict[str, Any], heads: list[str], **hyper: Any) -> ModelSpec:
    """Read the shapes of a collated batch into a ``ModelSpec``."""
    def shape(name: str) -> list[int] | None:
        return [int(s) for s in batch[name].shape[1:]] if name in batch else None

    return ModelSpec(latent_shape=shape("vae.latents"), text_dim=(shape("text.embedding") or [0])[0], heads=heads,
                     zm_shape=shape("motion.zm"), flow_shape=shape("flow.tracks"),
                     keyframe_shape=shape("keyframes.codes"), **hyper)


def _patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, T, h, w) -> (B, T * ceil(h/p) * ceil(w/p), C * p * p), zero-padding h and w to multiples of p."""
    b, c, t, h, w = latents.shape
    latents = F.pad(latents, (0, (-w) % p, 0, (-h) % p))
    hp, wp = latents.shape[-2] // p, latents.shape[-1] // p
    x = latents.reshape(b, c, t, hp, p, wp, p).permute(0, 2, 3, 5, 1, 4, 6)
    return x.reshape(b, t * hp * wp, c * p * p)


class FastDecoder(nn.Module):
    """GRU over FAST tokens, conditioned on the pooled embedding; ids ``vocab`` = BOS, ``vocab + 1`` = EOS."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab + 2, d)
        self.init = nn.Linear(d, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.out = nn.Linear(d, vocab + 1)

    def forward(self, pooled: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        lengths = mask.sum(dim=1)
        tokens = tokens.long().masked_fill(~mask, 0)
        bos = torch.full((b, 1), self.vocab, dtype=torch.long, device=tokens.device)
        inputs = torch.cat([bos, tokens], dim=1)  # predict t0..t_{n-1}, then EOS
        targets = torch.cat([tokens, torch.zeros_like(bos)], dim=1)
        targets.scatter_(1, lengths[:, None], self.vocab)  # EOS right after the last real token
        valid = torch.arange(inputs.shape[1], device=tokens.device)[None] <= lengths[:, None]
        h0 = torch.tanh(self.init(pooled)).unsqueeze(0).contiguous()
        hidden, _ = self.gru(self.embed(inputs), h0)
        logits = self.out(hidden).float()
        loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return (loss * valid).sum() / valid.sum().clamp(min=1)


class LatentMotionModel(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        c, t, h, w = spec.latent_shape
        p, d = spec.patch, spec.d_model
        n_tokens = t * math.ceil(h / p) * math.ceil(w / p)
        self.patch_in = nn.Linear(c * p * p, d)
        self.text_in = nn.Linear(spec.text_dim, d) if spec.text_dim else None
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 2, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, spec.n_heads, 4 * d, spec.dropout, batch_first=True, norm_first=True)
        self.trunk = nn.TransformerEncoder(layer, spec.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict()
        if "zm" in spec.heads:
            self.heads["zm"] = nn.Linear(d, math.prod(spec.zm_shape))
        if "flow" in spec.heads:
            points, steps, dims = spec.flow_shape
            self.flow_queries = nn.Parameter(torch.randn(points, d) * 0.02)
            self.heads["flow"] = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, steps * dims))
        if "fast" in spec.heads:
            self.heads["fast"] = FastDecoder(spec.fast_vocab, d)
        if "keyframes" in spec.heads:
            self.key_queries = nn.Parameter(torch.randn(math.prod(spec.keyframe_shape), d) * 0.02)
            self.heads["keyframes"] = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, spec.keyframe_codes))

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        """Pooled (B, d) embedding of the latents and the text."""
        x = self.patch_in(_patchify(batch["vae.latents"].float(), self.spec.patch))
        parts = [self.cls.expand(x.shape[0], -1, -1)]
        if self.text_in is not None:
            parts.append(self.text_in(batch["text.embedding"].float()).unsqueeze(1))
        x = torch.cat(parts + [x], dim=1)
        x = self.trunk(x + self.pos[:, : x.shape[1]])
        return self.norm(x[:, 0])

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-head losses (float32 scalars) for one collated batch."""
        pooled = self.embed(batch)
        losses = {}
        if "zm" in self.heads:
            target = batch["motion.zm"].float().flatten(1)
            losses["zm"] = F.mse_loss(self.heads["zm"](pooled).float(), target)
        if "flow" in self.heads:
            pred = self.heads["flow"](pooled[:, None] + self.flow_queries[None]).float()
            target = batch["flow.tracks"].float()
            valid = batch["flow.valid"].float().unsqueeze(-1).expand_as(target)
            err = (pred.reshape(target.shape) - target).square() * valid
            losses["flow"] = err.sum() / valid.sum().clamp(min=1)
        if "fast" in self.heads:
            tokens = batch["fast.tokens"]
            mask = batch.get("fast.tokens.mask", torch.ones_like(tokens, dtype=torch.bool))
            losses["fast"] = self.heads["fast"](pooled, tokens, mask)
        if "keyframes" in self.heads:
            logits = self.heads["keyframes"](pooled[:, None] + self.key_queries[None]).float()
            target = batch["keyframes.codes"].long().flatten(1)
            losses["keyframes"] = F.cross_entropy(logits.transpose(1, 2), target)
        return losses
