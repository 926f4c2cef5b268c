"""Video-VAE latents (LingBot-VA / CoWVLA convention) with ``diffusers.AutoencoderKLWan``.

Convention (SPEC section 1): pixels scaled to ``[-1, 1]``; a clip of ``1 + 4k`` frames (longer clips are
trimmed to the first ``4n + 1`` frames); camera views concatenated side by side (along width) before
encoding; the posterior *mean* is kept and normalised per channel as ``(mu - latents_mean) / latents_std``
with the vectors from the VAE's config. No other scale factor.

``kind="image"`` encodes every frame alone with ``diffusers.AutoencoderKL`` (T' = T, no trimming) and
normalises with the image-VAE convention ``(mu - shift_factor) * scaling_factor`` (``shift_factor`` is 0
when the config has none), i.e. exactly what Stable-Diffusion-style pipelines feed their denoisers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from motiondata.encode.base import (
    EncoderMixin,
    inference_mode,
    model_cache,
    prepare_module,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)

KINDS = ("wan", "image")
F32_KEY = "_vae_f32"  # item key: list (one per sample) of {latent field name: float32 (C,T',h,w)}
LATENT_FIELD = "vae.latents"


def trim_4n1(length: int) -> int:
    """Largest ``4n + 1 <= length`` (the frame count a causal Wan VAE encodes without waste)."""
    if length < 1:
        raise ValueError(f"a clip needs at least 1 frame, got {length}")
    return 1 + 4 * ((length - 1) // 4)


def frames_to_pixels(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(B, T, H, W, 3) uint8`` -> ``(B, 3, T, H, W)`` in ``[-1, 1]``."""
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (B, T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    x = x.permute(0, 4, 1, 2, 3).to(torch.float32) / 127.5 - 1.0
    return x.to(dtype)


def pixels_to_frames(x: torch.Tensor) -> np.ndarray:
    """``(B, 3, T, H, W)`` in ``[-1, 1]`` -> ``(B, T, H, W, 3) uint8`` (rounded, clipped)."""
    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


def _resolve_source(path_or_hub_id: str, subfolder: str | None) -> tuple[str, str | None, bool]:
    """Local directory (optionally with a ``vae/`` subfolder, as in full pipeline repos) or a hub id."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if subfolder is None and not (path / "config.json").exists() and (path / "vae" / "config.json").exists():
            subfolder = "vae"
        if not (path / (subfolder or "") / "config.json").exists():
            raise FileNotFoundError(f"VAE directory {path}/{subfolder or ''} has no config.json; point `model` at a "
                                    "diffusers VAE directory (saved with save_pretrained) or its parent pipeline")
        return str(path.resolve()), subfolder, True
    if path_or_hub_id.startswith((".", "/", "~")) or path_or_hub_id.count("/") != 1:
        raise FileNotFoundError(f"VAE {path_or_hub_id!r} is neither an existing directory nor a hub id 'org/name'")
    return path_or_hub_id, subfolder, False


@model_cache(maxsize=4)
def _load_model(source: str, kind: str, subfolder: str | None, device: str, dtype: str) -> torch.nn.Module:
    from diffusers import AutoencoderKL, AutoencoderKLWan

    if kind not in KINDS:
        raise ValueError(f"VAE kind {kind!r} must be one of {KINDS}")
    cls = AutoencoderKLWan if kind == "wan" else AutoencoderKL
    name, subfolder, local = _resolve_source(source, subfolder)
    log.info("loading %s from %s (subfolder=%s) on %s/%s", cls.__name__, name, subfolder, device, dtype)
    kwargs: dict[str, Any] = {"subfolder": subfolder} if subfolder else {}
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:  # say it once here, not diffusers' multi-line warning
        kwargs["low_cpu_mem_usage"] = False
    model = cls.from_pretrained(name, local_files_only=local, torch_dtype=resolve_dtype(dtype), **kwargs)
    return prepare_module(model, torch.device(device), resolve_dtype(dtype))


def load_video_vae(path_or_hub_id: str, kind: str = "wan", device: str = "auto", dtype: str = "fp32",
                   subfolder: str | None = None) -> VideoVae:
    """Load (once per process) a diffusers VAE from a local directory or a hub id and wrap it.

    ``kind="wan"``: ``AutoencoderKLWan`` (Wan 2.1 and Wan 2.2 configs); ``kind="image"``: ``AutoencoderKL``
    applied per frame. A local directory is read with ``local_files_only=True`` (never the network).
    """
    resolved_device = str(resolve_device(device))
    resolve_dtype(dtype)  # validate early
    model = _load_model(str(path_or_hub_id), kind, subfolder, resolved_device, str(dtype))
    return VideoVae(model, kind)


class VideoVae:
    """A loaded VAE plus the encoding convention. Latents in and out are *normalised* float tensors."""

    def __init__(self, model: torch.nn.Module, kind: str = "wan"):
        if kind not in KINDS:
            raise ValueError(f"VAE kind {kind!r} must be one of {KINDS}")
        self.model, self.kind = model, kind
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = model.config
        if kind == "wan":
            self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)
            self.std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)
            self.spatial_factor = int(cfg.scale_factor_spatial)
            self.temporal_factor = int(cfg.scale_factor_temporal)
            self.z_dim = int(cfg.z_dim)
        else:
            self.shift = float(getattr(cfg, "shift_factor", None) or 0.0)
            self.scale = float(cfg.scaling_factor)
            self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
            self.temporal_factor = 1
            self.z_dim = int(cfg.latent_channels)

    def frames_used(self, length: int) -> int:
        """How many leading frames of a ``length``-frame clip get encoded."""
        return trim_4n1(length) if self.kind == "wan" else length

    def check_size(self, height: int, width: int, what: str = "frames") -> None:
        f = self.spatial_factor
        if height % f or width % f:
            raise ValueError(f"{what}: size {height}x{width} is not a multiple of the VAE's spatial factor {f}; "
                             f"set the stage's `size` to a multiple of {f} (e.g. [128, 128])")

    def posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Raw posterior mean of pixels ``(B, 3, T, H, W)`` in [-1, 1] (no normalisation)."""
        if self.kind == "wan":
            return self.model.encode(x.to(self.dtype)).latent_dist.mean
        b, c, t, h, w = x.shape
        flat = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).to(self.dtype)
        mu = self.model.encode(flat).latent_dist.mean
        return mu.reshape(b, t, *mu.shape[1:]).permute(0, 2, 1, 3, 4)

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        if self.kind == "wan":
            return (mu.float() - self.mean) / self.std
        return (mu.float() - self.shift) * self.scale

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "wan":
            return z.float() * self.std + self.mean
        return z.float() / self.scale + self.shift

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """``(B, T, H, W, 3) uint8`` -> normalised ``(B, C, T', h, w) float32`` (T trimmed to 4n+1 for Wan)."""
        frames = frames[:, : self.frames_used(frames.shape[1])]
        self.check_size(frames.shape[2], frames.shape[3])
        with inference_mode(self.device):
            x = frames_to_pixels(frames, self.device, self.dtype)
            return self.normalize(self.posterior_mean(x)).cpu().numpy()

    def decode(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        """Normalised ``(B, C, T', h, w)`` -> ``(B, T, H, W, 3) uint8`` reconstructions."""
        with inference_mode(self.device):
            z = torch.as_tensor(np.asarray(latents, dtype=np.float32), device=self.device)
            mu = self.denormalize(z).to(self.dtype)
            if self.kind == "wan":
                return pixels_to_frames(self.model.decode(mu).sample)
            b, c, t, h, w = mu.shape
            out = self.model.decode(mu.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)).sample
            return pixels_to_frames(out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4))


def resize_frames(frames: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """``(T, H, W, 3) uint8`` resized to ``size = (H, W)`` with antialiased bilinear filtering."""
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclass(frozen=True)
class VaeStage(EncoderMixin):
    """Stage: ``sample["vae.latents"]`` float16 ``(C, T', h, w)`` per window (normalised posterior mean).

    ``cameras``: views to encode (default: all, sorted). ``side_by_side=True`` concatenates them along
    width into one ``vae.latents``; ``False`` writes ``vae.latents.<cam>`` per view. ``size``: optional
    ``[H, W]`` every view is resized to first. The window's frames are trimmed to their first 4n+1.
    Float32 latents are left in ``item["_vae_f32"]`` (one ``{field: array}`` dict per sample).
    """

    model: str
    cameras: list | None = None
    side_by_side: bool = True
    dtype: str = "fp32"
    device: str = "auto"
    batch_size: int = 4
    name: str = "vae"
    num_gpus = 1.0  # GPUs per model copy in a Ray actor pool (class attribute, not a parameter)
    kind: str = "wan"
    subfolder: str | None = None
    size: list | None = None
    prefix: str | None = None  # `as:` in the spec: output names <prefix>.latents (default vae)
    scope: str = "episode"  # recipe mode: "episode" (one causal encode) or "window" (clips of `clip` frames)
    clip: int = 17
    clip_stride: int | None = None

    def __post_init__(self) -> None:
        if self.scope not in ("episode", "window"):
            raise ValueError(f"scope {self.scope!r}: use 'episode' (whole episode, causal) or 'window' (clips)")
        if self.clip < 1:
            raise ValueError("clip must be >= 1 frames (1 + 4k for the Wan VAE, e.g. 17)")

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        """Recipe mode: the ``<as>.latents`` episode table (see motiondata.encode.vae_tables)."""
        from motiondata.encode.vae_tables import vae_tables

        return vae_tables(self, item)

    def build_tables_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Recipe mode over several episodes of a shard at once (lockstep causal encode)."""
        from motiondata.encode.vae_tables import vae_tables_batch

        return vae_tables_batch(self, items)

    def load(self) -> VideoVae:
        return load_video_vae(self.model, self.kind, self.device, self.dtype, self.subfolder)

    def views(self, episode: Any, start: int, stop: int) -> dict[str, np.ndarray]:
        """``{field: (T, H, W, 3) uint8}`` for one window (side-by-side or one field per camera)."""
        cams = list(self.cameras) if self.cameras else episode.cameras
        missing = [c for c in cams if c not in episode.rgb]
        if missing:
            raise KeyError(f"vae stage: camera(s) {missing} not in episode {episode.id!r} (has {episode.cameras}); "
                           "fix the stage's `cameras` list")
        frames = {c: resize_frames(episode.rgb[c][start:stop], self.size) for c in cams}
        if self.side_by_side or len(cams) == 1:
            return {LATENT_FIELD: np.concatenate([frames[c] for c in cams], axis=2)}
        return {f"{LATENT_FIELD}.{c}": frames[c] for c in cams}

    def encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Batched: equal-shape ``(T, H, W, 3) uint8`` clips -> normalised float32 ``(C, T', h, w)`` each."""
        vae = self.load()
        out: list[np.ndarray] = []
        for start in range(0, len(clips), self.batch_size):
            out.extend(vae.encode(np.stack(clips[start:start + self.batch_size])))
        return out

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        episode, windows, samples = item["episode"], item["windows"], item["samples"]
        per_sample: list[dict[str, np.ndarray]] = [{} for _ in samples]
        groups: dict[tuple, list[tuple[int, str, np.ndarray]]] = {}
        for i, window in enumerate(windows):
            for field, clip in self.views(episode, window.start, window.stop).items():
                groups.setdefault((field, clip.shape), []).append((i, field, clip))
        for members in groups.values():
            latents = self.encode([clip for _, _, clip in members])
            for (i, field, _), z in zip(members, latents):
                per_sample[i][field] = z
        for sample, fields in zip(samples, per_sample):
            for field, z in fields.items():
                sample[field] = z.astype(np.float16)
        item[F32_KEY] = per_sample
        return item

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """One sample's ``(C, T', h, w)`` latents -> ``(T, H, W, 3) uint8`` reconstruction."""
        return self.load().decode(np.asarray(latents, dtype=np.float32)[None])[0]
