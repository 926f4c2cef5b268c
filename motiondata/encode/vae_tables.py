"""Episode tables of the VAE stage (recipe mode).

``scope: episode``: the whole episode is encoded once, causally, one latent frame at a time (the Wan
encoder's own feature cache carries the history), so memory stays bounded by one 4-frame chunk whatever
the episode length and no frame is encoded twice. Table ``<as>.latents`` (axis ``latent``): rows
``(C, h, w)``, row ``k`` seen frames up to ``4k`` (frames past the last ``4n + 1`` are not covered).

``scope: window``: one clip of ``clip`` frames per needed start (or every ``clip_stride`` frames), as
CoWVLA-style clip latents need. Table ``<as>.latents`` (axis ``clip``): rows ``(C, T', h, w)``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from motiondata.encode.base import inference_mode
from motiondata.pipeline.tables import Table, needed_frames

log = logging.getLogger(__name__)
ENCODER_CALLS: dict[str, int] = {"frames": 0}  # frames fed to the encoder in this process (benchmarks)


def _pixels(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(T, H, W, 3) uint8`` -> ``(1, 3, T, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(3, 0, 1, 2)[None]
    return (x.float() / 127.5 - 1.0).to(dtype)


def stream_encode_wan(vae: Any, frames: np.ndarray) -> np.ndarray:
    """Causal Wan encode of ``(T, H, W, 3)`` one latent frame at a time -> normalised ``(T', C, h, w)``.

    Same arithmetic as ``AutoencoderKLWan._encode`` (frame 0 alone, then 4 frames per latent, through
    the encoder's feature cache; ``quant_conv`` is a 1x1x1 convolution, so it runs per chunk): the lockstep
    encode of :func:`stream_encode_wan_batch` with one episode."""
    return stream_encode_wan_batch(vae, [frames])[0]


def stream_encode_wan_batch(vae: Any, clips: list[np.ndarray]) -> list[np.ndarray]:
    """:func:`stream_encode_wan` of several same-size episodes at once, in lockstep (a CPU or GPU runs a
    batch of B chunks far faster than B single chunks). Episodes are sorted by length; when the shorter
    ones end, the batch and the encoder's feature cache shrink to the episodes still running."""
    model = vae.model
    order = sorted(range(len(clips)), key=lambda i: -len(clips[i]))
    steps = [1 + (len(clips[i]) - 1) // 4 for i in order]
    outs: list[list[np.ndarray]] = [[] for _ in order]
    with inference_mode(vae.device):
        model.clear_cache()
        try:
            for step in range(steps[0]):
                active = sum(1 for n in steps if n > step)
                lo, hi = (0, 1) if step == 0 else (1 + 4 * (step - 1), 1 + 4 * step)
                x = torch.cat([_pixels(clips[i][lo:hi], vae.device, vae.dtype) for i in order[:active]])
                if model.config.patch_size is not None:
                    from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

                    x = patchify(x, patch_size=model.config.patch_size)
                model._enc_feat_map = [f[:active] if torch.is_tensor(f) else f for f in model._enc_feat_map]
                model._enc_conv_idx = [0]
                h = model.encoder(x, feat_cache=model._enc_feat_map, feat_idx=model._enc_conv_idx)
                mu = vae.normalize(model.quant_conv(h)[:, : model.config.z_dim])
                for k in range(active):
                    outs[k].append(mu[k].permute(1, 0, 2, 3).cpu().numpy())
                ENCODER_CALLS["frames"] += active * (hi - lo)
        finally:
            model.clear_cache()
    result: list[np.ndarray] = [np.zeros(0)] * len(clips)
    for k, i in enumerate(order):
        result[i] = np.concatenate(outs[k], axis=0).astype(np.float32)
    return result


def encode_episode(vae: Any, frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` -> ``(T', C, h, w)`` float32 for the whole episode (streamed for Wan)."""
    if vae.kind == "wan" and not getattr(vae.model, "use_tiling", False):
        return stream_encode_wan(vae, frames)
    ENCODER_CALLS["frames"] += vae.frames_used(len(frames))
    return vae.encode(frames[None])[0].transpose(1, 0, 2, 3)


def latent_frames(kind: str, rows: int) -> np.ndarray:
    """The frame each latent row has seen up to: 0, 4, 8, ... (Wan) or 0, 1, 2, ... (per-frame VAE)."""
    step = 4 if kind == "wan" else 1
    return np.arange(rows, dtype=np.int64) * step


def vae_tables_batch(stage: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``scope: episode`` over several episodes at once: views of equal size are encoded in lockstep
    (same latents as one episode at a time, to float rounding; same bytes for the same shard)."""
    vae = stage.load()
    if stage.scope != "episode" or vae.kind != "wan" or getattr(vae.model, "use_tiling", False):
        return [vae_tables(stage, item) for item in items]
    prefix = stage.prefix or "vae"
    groups: dict[tuple, list[tuple[dict[str, Any], str, np.ndarray]]] = {}
    for item in items:
        episode = item["episode"]
        for field, clip in stage.views(episode, 0, episode.length).items():
            groups.setdefault(clip.shape[1:], []).append((item, prefix + field[len("vae"):], clip))
    for members in groups.values():
        latents = stream_encode_wan_batch(vae, [clip for _, _, clip in members])
        for (item, name, _), z in zip(members, latents):
            item["tables"][name] = Table(z.astype(np.float16), latent_frames(vae.kind, len(z)), "latent")
            item.setdefault("f32", {})[name] = z
    return items


def vae_tables(stage: Any, item: dict[str, Any]) -> dict[str, Any]:
    episode = item["episode"]
    vae = stage.load()
    prefix = stage.prefix or "vae"
    views = stage.views(episode, 0, episode.length)
    f32 = item.setdefault("f32", {})
    for field, clip in views.items():
        name = prefix + field[len("vae"):]
        if stage.scope == "episode":
            z = encode_episode(vae, clip)
            table = Table(z.astype(np.float16), latent_frames(vae.kind, len(z)), "latent")
        else:
            starts = [s for s in needed_frames(item, name, stage.clip_stride) if s + stage.clip <= episode.length]
            z = np.stack(stage.encode([clip[s:s + stage.clip] for s in starts])) if starts else \
                np.zeros((0, 1, 1, 1, 1), np.float32)
            ENCODER_CALLS["frames"] += len(starts) * vae.frames_used(stage.clip)
            table = Table(z.astype(np.float16), np.asarray(starts, dtype=np.int64), "clip")
        item["tables"][name] = table
        f32[name] = z
    return item
