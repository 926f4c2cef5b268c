"""Factories for encoder tests: tiny random-init VAEs saved as diffusers directories, episodes, items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from motiondata.episode import Episode
from motiondata.pipeline.stage import plan_windows

WAN21_TINY = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1,
              "temperal_downsample": [False, True, True], "latents_mean": [0.1, -0.2, 0.3, 0.0],
              "latents_std": [1.5, 0.5, 2.0, 1.0]}
WAN22_TINY = {"base_dim": 8, "decoder_base_dim": 12, "z_dim": 8, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1,
              "temperal_downsample": [False, True, True], "is_residual": True, "in_channels": 12,
              "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
              "latents_mean": [0.05 * i for i in range(8)], "latents_std": [1.0 + 0.1 * i for i in range(8)]}
IMAGE_TINY = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 2,
              "up_block_types": ("UpDecoderBlock2D",) * 2, "block_out_channels": (8, 16), "layers_per_block": 1,
              "latent_channels": 4, "norm_num_groups": 4, "sample_size": 32, "shift_factor": 0.05}


def tiny_wan(config: dict = WAN21_TINY, seed: int = 0) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**config).eval()


def make_frame_local(model: torch.nn.Module) -> torch.nn.Module:
    """Give a Wan VAE's encoder no temporal memory and no global mixing (exact-locality tests).

    Every causal 3D conv keeps only its current-frame tap (so static input gives identical latents after
    the first, cache-free, chunk), and the mid-block attention's output projection is zeroed (so the
    residual attention block is the identity and the encoder is spatially local).
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import (
        WanAttentionBlock,
        WanCausalConv3d,
    )

    with torch.no_grad():
        for module in model.encoder.modules():
            if isinstance(module, WanCausalConv3d) and module.weight.shape[2] > 1:
                module.weight[:, :, :-1] = 0
            if isinstance(module, WanAttentionBlock):
                module.proj.weight.zero_()
                module.proj.bias.zero_()
    return model


def save_model(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def save_tiny_wan(directory: Path, config: dict = WAN21_TINY, seed: int = 0, frame_local: bool = False) -> Path:
    model = tiny_wan(config, seed)
    return save_model(make_frame_local(model) if frame_local else model, directory)


def save_tiny_image_vae(directory: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return save_model(AutoencoderKL(**IMAGE_TINY).eval(), directory)


def random_frames(b: int, t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(b, t, h, w, 3), dtype=np.uint8)


def moving_object_clip(t: int, size: int, start: int = 4, step: int = 4, box: int = 12, seed: int = 0) -> np.ndarray:
    """``(t, size, size, 3)`` static random texture with a white box moving diagonally from ``start``."""
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 256, size=(1, size, size, 3), dtype=np.uint8), t, axis=0)
    for i in range(t):
        p = start + step * i
        frames[i, p:p + box, p:p + box] = 255
    return frames


def make_episode(rgb: dict[str, np.ndarray], language: str = "put the red block in the bowl",
                 episode_id: str = "ep0") -> Episode:
    return Episode(id=episode_id, source="test", fps=10.0, rgb=rgb, language=language)


def make_item(episode: Episode, window: int, stride: int) -> dict:
    windows = plan_windows(episode.length, window, stride)
    samples = [{"__key__": f"{episode.id}-{w.index:06d}",
                "meta": {"episode": episode.id, "start": w.start, "length": w.length, "language": episode.language}}
               for w in windows]
    return {"episode": episode, "windows": windows, "samples": samples, "episode_fields": {}}
