"""Prediction heads, one per paper objective; each reads a target field of a recipe store and its masks.

A target field holds ``K`` rows per sample (``(B, K, ...)``). A row counts only when it is real:
``~<field>.pad`` (the recipe padded it: past the episode end, no table row) and ``<field>.present`` (the
sample has the field at all: a video sample has no ``actions`` / ``fast`` rows in a mixed store). A batch
without the field skips the head. Every head returns ``(loss, rows)``: the loss over real rows only and
how many rows it saw (0: the head did not train on this batch), and ``evaluate`` returns summed held-out
metrics of the model and of a trivial baseline over the same rows.

| head | paper | target | loss | held-out metric vs baseline |
|---|---|---|---|---|
| ``zm`` | CoWVLA | z_m of the next segment | MSE (normalised) | MSE vs the training mean |
| ``flow`` | LaMP | (P, S, 3) scene flow from t | MSE masked by validity | MSE vs the training mean |
| ``fast`` | CoWVLA/FAST | next K FAST chunks | autoregressive CE | next-token accuracy vs the most frequent token |
| ``keyframes`` | CoWVLA | next keyframe's VQGAN codes | CE | accuracy vs the most frequent code |
| ``actions`` | CLaD | a[t:t+H] | flow matching | MSE of a 10-step Euler sample vs the training mean |
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def rows(batch: dict[str, Any], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values (B, K, ...), real rows (B, K) bool)``; a field without ``.pad`` (a windowed store) is one row."""
    values = batch[name]
    if f"{name}.pad" not in batch:
        values = values.unsqueeze(1)
        mask = torch.ones(values.shape[:2], dtype=torch.bool, device=values.device)
    else:
        mask = ~batch[f"{name}.pad"].bool()
        if f"{name}.pad.present" in batch:
            mask = mask & batch[f"{name}.pad.present"].bool()[:, None]
    if f"{name}.present" in batch:
        mask = mask & batch[f"{name}.present"].bool()[:, None]
    return values, mask


def _zero(ref: torch.Tensor) -> torch.Tensor:
    return ref.sum() * 0.0  # keeps the graph (and DDP) happy when a head sees no real row


class Normaliser(nn.Module):
    """Elementwise training mean and one scalar std of a field's rows (buffers: saved in checkpoints)."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(()))

    def set(self, mean: torch.Tensor, std: float) -> None:
        self.mean.copy_(mean.reshape(self.mean.shape))
        self.std.fill_(max(float(std), 1e-6))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class RegressionHead(nn.Module):
    """``zm`` (CoWVLA): the rows regressed from the pooled embedding, MSE in normalised units."""

    def __init__(self, spec: dict[str, Any], d: int):
        super().__init__()
        self.field, self.shape, self.k = spec["field"], spec["shape"], spec["rows"]
        self.norm = Normaliser(self.shape)
        self.net = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, self.k * math.prod(self.shape)))

    def _errors(self, pooled: torch.Tensor, batch: dict[str, Any]):
        values, mask = rows(batch, self.field)
        target = self.norm(values)
        pred = self.net(pooled).float().reshape(target.shape)
        return (pred - target).square().flatten(2).mean(-1), target.square().flatten(2).mean(-1), mask

    def forward(self, pooled: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        err, _, mask = self._errors(pooled, batch)
        n = int(mask.sum())
        return ((err * mask).sum() / n if n else _zero(err)), n

    def evaluate(self, pooled: torch.Tensor, batch: dict[str, Any]) -> dict[str, tuple[float, int]]:
        err, base, mask = self._errors(pooled, batch)
        n = int(mask.sum())
        return {"model": (float((err * mask).sum()), n), "baseline": (float((base * mask).sum()), n)}


class FlowHead(nn.Module):
    """``flow`` (LaMP): one learned query per track point; MSE over valid (point, step) entries."""

    def __init__(self, spec: dict[str, Any], d: int):
        super().__init__()
        self.field, self.valid, self.k = spec["field"], spec["valid"], spec["rows"]
        points, steps, dims = spec["shape"]
        self.norm = Normaliser([steps, dims])
        self.queries = nn.Parameter(torch.randn(points, d) * 0.02)
        self.net = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, self.k * steps * dims))
        self.bias = nn.Parameter(torch.zeros(points, self.k * steps * dims))  # per-point mean motion

    def _errors(self, pooled: torch.Tensor, batch: dict[str, Any]):
        values, mask = rows(batch, self.field)  # (B, K, P, S, 3)
        valid = rows(batch, self.valid)[0].bool() & mask[:, :, None, None]  # (B, K, P, S)
        target = self.norm(values)
        pred = (self.net(pooled[:, None] + self.queries[None]) + self.bias).float()  # (B, P, K*S*3)
        pred = pred.reshape(target.shape[0], target.shape[2], self.k, *target.shape[3:]).transpose(1, 2)
        w = valid.unsqueeze(-1).float()
        return ((pred - target).square() * w).sum(), (target.square() * w).sum(), w.sum() * target.shape[-1], mask

    def forward(self, pooled: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        err, _, count, mask = self._errors(pooled, batch)
        n = int(mask.sum())
        return (err / count.clamp(min=1) if n else _zero(err)), n

    def evaluate(self, pooled: torch.Tensor, batch: dict[str, Any]) -> dict[str, tuple[float, int]]:
        err, base, count, _ = self._errors(pooled, batch)
        return {"model": (float(err), int(count)), "baseline": (float(base), int(count))}


class CodesHead(nn.Module):
    """``keyframes`` (CoWVLA): one learned query per code position of the next keyframe; cross-entropy."""

    def __init__(self, spec: dict[str, Any], vocab: int, d: int):
        super().__init__()
        self.field, self.k, self.vocab = spec["field"], spec["rows"], vocab
        self.queries = nn.Parameter(torch.randn(self.k * math.prod(spec["shape"]), d) * 0.02)
        self.net = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, vocab))
        self.register_buffer("mode", torch.zeros((), dtype=torch.long))  # most frequent training code

    def _logits(self, pooled: torch.Tensor, batch: dict[str, Any]):
        values, mask = rows(batch, self.field)
        logits = self.net(pooled[:, None] + self.queries[None]).float()  # (B, K*h*w, V)
        target = values.long().flatten(1)
        weight = mask.repeat_interleave(target.shape[1] // mask.shape[1], dim=1).float()
        return logits, target, weight, mask

    def forward(self, pooled: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        logits, target, weight, mask = self._logits(pooled, batch)
        n = int(mask.sum())
        loss = F.cross_entropy(logits.transpose(1, 2), target.clamp(0, self.vocab - 1), reduction="none")
        return ((loss * weight).sum() / weight.sum() if n else _zero(loss)), n

    def evaluate(self, pooled: torch.Tensor, batch: dict[str, Any]) -> dict[str, tuple[float, int]]:
        logits, target, weight, _ = self._logits(pooled, batch)
        hits = (logits.argmax(-1) == target).float()
        n = int(weight.sum())
        return {"model": (float((hits * weight).sum()), n), "baseline": (float(((target == self.mode) * weight).sum()), n)}


class FastHead(nn.Module):
    """``fast`` (CoWVLA / FAST): each real chunk decoded autoregressively by a GRU started from the pooled
    embedding + a chunk-index embedding, teacher-forced from BOS (id ``vocab``), ending in EOS (``vocab + 1``)."""

    def __init__(self, spec: dict[str, Any], vocab: int, d: int):
        super().__init__()
        self.field, self.vocab = spec["field"], vocab
        self.embed = nn.Embedding(vocab + 2, d)
        self.chunk = nn.Embedding(max(spec["rows"], 1), d)
        self.init = nn.Linear(d, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.out = nn.Linear(d, vocab + 2)
        self.register_buffer("mode", torch.zeros((), dtype=torch.long))

    def _sequences(self, pooled: torch.Tensor, batch: dict[str, Any]):
        tokens, mask = rows(batch, self.field)  # (B, K, L)
        if f"{self.field}.len" in batch:
            lengths = batch[f"{self.field}.len"].long()
        elif f"{self.field}.mask" in batch:  # a windowed store: one chunk, padded with a mask
            lengths = batch[f"{self.field}.mask"].sum(1, keepdim=True)
        else:
            lengths = torch.full(tokens.shape[:2], tokens.shape[-1], device=tokens.device)
        real = mask & (lengths > 0)
        b, k = real.nonzero(as_tuple=True)  # one sequence per real (sample, chunk)
        tok, n = tokens[b, k].long().clamp(0, self.vocab - 1), lengths[b, k]
        start = torch.full((len(b), 1), self.vocab, dtype=torch.long, device=tok.device)
        inputs = torch.cat([start, tok], 1)
        targets = torch.cat([tok, torch.zeros_like(start)], 1)
        targets.scatter_(1, n[:, None], self.vocab + 1)  # EOS right after the last real token
        weight = (torch.arange(inputs.shape[1], device=tok.device)[None] <= n[:, None]).float()
        h0 = torch.tanh(self.init(pooled[b] + self.chunk(k))).unsqueeze(0).contiguous()
        hidden, _ = self.gru(self.embed(inputs), h0)
        return self.out(hidden).float(), targets, weight

    def forward(self, pooled: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        logits, targets, weight = self._sequences(pooled, batch)
        if not len(targets):
            return _zero(pooled), 0
        loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return (loss * weight).sum() / weight.sum(), len(targets)

    def evaluate(self, pooled: torch.Tensor, batch: dict[str, Any]) -> dict[str, tuple[float, int]]:
        logits, targets, weight = self._sequences(pooled, batch)
        n = int(weight.sum())
        hits = ((logits.argmax(-1) == targets).float() * weight).sum() if n else 0.0
        return {"model": (float(hits), n), "baseline": (float(((targets == self.mode) * weight).sum()), n)}


class ActionHead(nn.Module):
    """``actions`` (CLaD): a flow-matching head over the chunk a[t:t+H] (normalised per dimension): the
    velocity net sees x_s = (1-s) noise + s chunk, s and the pooled embedding; loss over real steps only.
    Sampling integrates 10 Euler steps from noise."""

    def __init__(self, spec: dict[str, Any], d: int, sample_steps: int = 10):
        super().__init__()
        self.field, self.h, self.sample_steps = spec["field"], spec["rows"], sample_steps
        self.dim = spec["shape"][-1]
        self.norm = Normaliser([self.dim])
        size = self.h * self.dim
        self.net = nn.Sequential(nn.Linear(size + 1 + d, 2 * d), nn.GELU(), nn.Linear(2 * d, 2 * d), nn.GELU(),
                                 nn.Linear(2 * d, size))

    def velocity(self, x: torch.Tensor, s: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), s[:, None], pooled.float()], 1)).reshape(x.shape)

    def forward(self, pooled: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        values, mask = rows(batch, self.field)  # (B, H, A), (B, H)
        keep = mask.any(1)
        n = int(keep.sum())
        if not n:
            return _zero(pooled), 0
        x1, w, cond = self.norm(values[keep]), mask[keep].float()[..., None], pooled[keep]
        x0 = torch.randn_like(x1)
        s = torch.rand(n, device=x1.device)
        xs = (1 - s[:, None, None]) * x0 + s[:, None, None] * x1
        err = (self.velocity(xs, s, cond).float() - (x1 - x0)).square() * w
        return err.sum() / (w.sum() * self.dim), n

    @torch.no_grad()
    def sample(self, pooled: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.randn((pooled.shape[0], self.h, self.dim), generator=generator, device="cpu").to(pooled.device)
        for i in range(self.sample_steps):
            s = torch.full((x.shape[0],), i / self.sample_steps, device=x.device)
            x = x + self.velocity(x, s, pooled).float() / self.sample_steps
        return x

    def evaluate(self, pooled: torch.Tensor, batch: dict[str, Any]) -> dict[str, tuple[float, int]]:
        values, mask = rows(batch, self.field)
        w = mask.float()[..., None]
        target = self.norm(values)
        pred = self.sample(pooled, torch.Generator().manual_seed(0))
        n = int(w.sum()) * self.dim
        return {"model": (float(((pred - target).square() * w).sum()), n),
                "baseline": (float((target.square() * w).sum()), n)}
