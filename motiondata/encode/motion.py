"""H/W-pooled motion latents z_m (CoWVLA, SPEC section 2).

From video-VAE latents ``z`` of shape ``(C, T', H', W')``:

- ``d = z[:, 1:] - z[:, :-1]``  (temporal difference; ``difference=False`` skips it and keeps ``T'``)
- ``motion.pool_h = d.mean(axis=H)``  -> ``(C, T'-1, W')``  (mean over H: keeps horizontal position)
- ``motion.pool_w = d.mean(axis=W)``  -> ``(C, T'-1, H')``  (mean over W: keeps vertical position)
- ``motion.zm = concat([pool_h, pool_w], axis=-1)`` -> ``(C, T'-1, W' + H')``

Static background cancels in the difference. With a causal video VAE (Wan) the first latent frame
encodes frame 0 alone, so the first difference ``z[1] - z[0]`` also carries appearance, and the VAE's
temporal memory and mid-block attention mean static regions are small, not exactly zero, in practice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from motiondata.encode.base import EncoderMixin
from motiondata.encode.vae import F32_KEY, LATENT_FIELD
from motiondata.pipeline.tables import Table

MOTION_FIELDS = ("pool_h", "pool_w", "zm")


def motion_latents(latents: np.ndarray, difference: bool = True) -> dict[str, np.ndarray]:
    """``(C, T', H', W')`` latents -> ``{"pool_h", "pool_w", "zm"}`` float32 (see module docstring)."""
    z = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
    if z.ndim != 4:
        raise ValueError(f"motion: latents must be (C, T', H', W'), got shape {tuple(z.shape)}; "
                         "run the vae stage first (it writes vae.latents as (C, T', h, w))")
    with torch.inference_mode():
        d = z[:, 1:] - z[:, :-1] if difference else z
        pool_h = d.mean(dim=2)  # (C, T'', W')
        pool_w = d.mean(dim=3)  # (C, T'', H')
        zm = torch.cat([pool_h, pool_w], dim=-1)
    return {"pool_h": pool_h.numpy(), "pool_w": pool_w.numpy(), "zm": zm.numpy()}


def motion_field(latent_field: str, stat: str) -> str:
    """``vae.latents`` -> ``motion.<stat>``; ``vae.latents.<cam>`` -> ``motion.<stat>.<cam>``."""
    suffix = latent_field[len(LATENT_FIELD):]
    return f"motion.{stat}{suffix}"


@dataclass(frozen=True)
class MotionStage(EncoderMixin):
    """Stage: ``motion.pool_h``, ``motion.pool_w``, ``motion.zm`` float16 per sample.

    Reads the float32 latents the vae stage left in ``item["_vae_f32"]``; without them (e.g. when
    re-deriving from a store) it reads the samples' float16 ``vae.latents*`` fields.
    """

    difference: bool = True
    name: str = "motion"
    prefix: str | None = None  # `as:`: output names <prefix>.pool_h ... (default motion)
    source: str = "vae"  # recipe mode: the latent tables to read, <source>.latents*

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        """Recipe mode: per latent step (``scope: episode`` latents: rows ``(C, W')``, ``(C, H')``,
        ``(C, W'+H')`` at the later latent's frame) or per clip (rows ``(C, T'-1, ...)``)."""
        tables, f32 = item["tables"], item.get("f32", {})
        sources = [n for n in sorted(tables) if n == self.source + ".latents" or
                   n.startswith(self.source + ".latents.")]
        if not sources:
            raise KeyError(f"motion stage: no {self.source}.latents table; list a vae stage (as: {self.source}) "
                           "before the motion stage")
        for name in sources:
            table = tables[name]
            z = f32.get(name, table.values).astype(np.float32)
            suffix = name[len(self.source + ".latents"):]
            for stat, values, frames in self._rows(table, z):
                tables[f"{self.prefix or 'motion'}.{stat}{suffix}"] = Table(values.astype(np.float16), frames,
                                                                            table.axis)
        return item

    def _rows(self, table: Table, z: np.ndarray):
        if table.axis == "clip":
            per = [motion_latents(c, self.difference) for c in z]
            for stat in MOTION_FIELDS:
                values = np.stack([p[stat] for p in per]) if per else np.zeros((0, 1, 1, 1), np.float32)
                yield stat, values, table.frames
            return
        pooled = motion_latents(z.transpose(1, 0, 2, 3), self.difference) if len(z) > 1 or not self.difference \
            else {s: np.zeros((z.shape[1], 0, 1), np.float32) for s in MOTION_FIELDS}
        frames = table.frames[1:] if self.difference else table.frames
        for stat in MOTION_FIELDS:
            yield stat, pooled[stat].transpose(1, 0, 2), frames

    def encode(self, latents: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [motion_latents(z, self.difference) for z in latents]

    def _latents(self, item: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        if F32_KEY in item:
            return item[F32_KEY]
        found = [{k: v for k, v in s.items() if k == LATENT_FIELD or k.startswith(LATENT_FIELD + ".")}
                 for s in item["samples"]]
        if item["samples"] and not any(found):
            raise KeyError("motion stage: no vae.latents in the samples and no item['_vae_f32']; "
                           "list the vae stage before the motion stage in the spec's `stages:`")
        return found

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        for sample, fields in zip(item["samples"], self._latents(item)):
            for latent_field, z in fields.items():
                for stat, value in motion_latents(z, self.difference).items():
                    sample[motion_field(latent_field, stat)] = value.astype(np.float16)
        return item
