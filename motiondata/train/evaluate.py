"""Training statistics and held-out evaluation for the slim trainer.

- ``FieldStats`` / ``gather``: one pass over (at most N batches of) the training split: each field's shape,
  the elementwise mean and scalar std the model normalises with (inputs and regression targets), the
  most frequent token / code (the CE heads' baseline), and the largest id (checked against the vocab).
- ``Meter``: training-loss and real-row counts per head, samples/s and data-wait share per logging interval;
- ``evaluate``: every held-out batch once; per head the model's metric and the trivial baseline's over
  the same real rows (MSE vs the training mean, accuracy vs the most frequent token), so a falling loss
  can be told from learning.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from motiondata.loader.transfer import to_device
from motiondata.train.heads import rows

LOWER_IS_BETTER = {"zm": True, "flow": True, "actions": True, "fast": False, "keyframes": False}


@dataclass
class FieldStats:
    """Running sums for one field, over its real rows."""

    trailing: int  # how many trailing axes the mean keeps (the normaliser's shape)
    total: torch.Tensor | None = None
    square: float = 0.0
    weight: torch.Tensor | None = None
    counts: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def add(self, values: torch.Tensor, w: torch.Tensor) -> None:
        """``values`` (..., *trailing) with weights ``w`` broadcastable to it."""
        x, w = values.float(), w.float().expand_as(values)
        lead = x.reshape(-1, *x.shape[x.ndim - self.trailing:]) if self.trailing else x.reshape(-1)
        wl = w.reshape(lead.shape)
        s, n = (lead * wl).sum(0), wl.sum(0)
        self.total = s if self.total is None else self.total + s
        self.weight = n if self.weight is None else self.weight + n
        self.square += float((x.square() * w).sum())

    def add_ids(self, ids: torch.Tensor) -> None:
        ids = ids.long().flatten()
        if len(ids):
            counts = torch.bincount(ids, minlength=len(self.counts))
            self.counts = counts if not len(self.counts) else counts + torch.nn.functional.pad(
                self.counts, (0, len(counts) - len(self.counts)))

    def mean_std(self) -> tuple[torch.Tensor, float]:
        mean, n = self.total / self.weight.clamp(min=1), float(self.weight.sum())
        var = (self.square - float((mean.square() * self.weight).sum())) / max(n, 1.0)
        return mean, math.sqrt(max(var, 0.0)) or 1.0

    def mode(self) -> int:
        return int(self.counts.argmax()) if len(self.counts) else 0


def _ids(batch: dict[str, Any], name: str, head: str, vocab: int) -> torch.Tensor:
    values, mask = rows(batch, name)
    if head == "keyframes":
        return values[mask]
    lengths = batch[f"{name}.len"].long() if f"{name}.len" in batch else \
        torch.full(values.shape[:2], values.shape[-1])
    real = mask & (lengths > 0)
    keep = torch.arange(values.shape[-1])[None, None] < lengths[..., None]
    eos = torch.full((int(real.sum()),), vocab + 1)
    return torch.cat([values[keep & real[..., None]].long(), eos])


def gather(batches: Iterable[dict[str, Any]], inputs: list[str], heads: dict[str, str], vocabs: dict[str, int],
           valid: str | None) -> tuple[dict[str, FieldStats], list[dict[str, Any]]]:
    """Statistics of the input and target fields over ``batches``; also returns the metas seen (for the
    leak check)."""
    stats: dict[str, FieldStats] = {}
    metas: list[dict[str, Any]] = []
    for batch in batches:
        metas += [dict(meta=m, key=k) for m, k in zip(batch.get("meta", []), batch["__key__"])]
        for name in inputs + [n for h, n in heads.items() if h in ("zm", "flow", "actions")]:
            if name not in batch:
                continue
            values, mask = rows(batch, name)
            head = next((h for h, n in heads.items() if n == name), None)
            trailing = {"flow": 2, "actions": 1}.get(head, values.ndim - 2)
            w = mask.reshape(*mask.shape, *[1] * (values.ndim - 2))
            if head == "flow" and valid in batch:
                w = w & rows(batch, valid)[0].bool()[..., None]
            stats.setdefault(name, FieldStats(trailing)).add(values, w)
        for head in ("fast", "keyframes"):
            name = heads.get(head)
            if name in batch:
                stats.setdefault(name, FieldStats(0)).add_ids(_ids(batch, name, head, vocabs[head]))
    return stats, metas


def fill(model: torch.nn.Module, stats: dict[str, FieldStats]) -> None:
    """Copy the gathered means/stds and modes into the model's buffers."""
    for name, norm in model.normalisers().items():
        if name in stats and stats[name].total is not None:
            mean, std = stats[name].mean_std()
            norm.set(mean, std)
    for head in model.heads.values():
        if hasattr(head, "mode") and head.field in stats:
            head.mode.fill_(stats[head.field].mode())


def evaluate(model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: torch.device) -> dict[str, dict]:
    """Held-out metric of every head next to its trivial baseline, over every real row of ``batches``."""
    sums: dict[str, dict[str, list[float]]] = {}
    was = model.training
    model.eval()
    for batch in batches:
        batch = to_device(batch, device)
        for head, parts in model.evaluate(batch).items():
            acc = sums.setdefault(head, {"model": [0.0, 0], "baseline": [0.0, 0]})
            for which, (total, n) in parts.items():
                acc[which][0] += total
                acc[which][1] += n
    model.train(was)
    out = {}
    for head, acc in sums.items():
        n = acc["model"][1]
        if not n:
            continue
        value, base = acc["model"][0] / n, acc["baseline"][0] / max(acc["baseline"][1], 1)
        lower = LOWER_IS_BETTER[head]
        out[head] = {"metric": "mse" if lower else "accuracy", "model": value, "baseline": base, "count": n,
                     "beats_baseline": value < base if lower else value > base}
    return out


class Meter:
    """Loss and real target rows per head, samples/s and data-wait share over one logging interval."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.wait, self.samples, self.losses, self.rows = time.perf_counter(), 0.0, 0, [], {}

    def add(self, wait: float, samples: int, losses: dict[str, tuple[torch.Tensor, int]], total: torch.Tensor) -> None:
        self.wait += wait
        self.samples += samples
        self.losses.append({"total": total.detach(), **{k: v.detach() for k, (v, n) in losses.items() if n}})
        for k, (_, n) in losses.items():
            self.rows[k] = self.rows.get(k, 0) + n

    def flush(self, step: int) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        per_step = [{k: float(v) for k, v in d.items()} for d in self.losses]  # one sync per interval
        names = {k for d in per_step for k in d}
        heads = {k: sum(d[k] for d in per_step if k in d) / sum(k in d for d in per_step) for k in sorted(names)}
        record = {"step": step, "loss": heads["total"], "heads": heads, "rows": dict(self.rows),
                  "step_losses": [d["total"] for d in per_step], "samples_per_s": self.samples / elapsed,
                  "data_wait": self.wait / elapsed}
        self.reset()
        return record
