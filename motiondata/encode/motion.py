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
