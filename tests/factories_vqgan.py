"""Tiny taming-layout VQGAN checkpoints and episodes for the VQGAN / keyframe tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from motiondata.episode import Episode


def tiny_ddconfig(resolution: int = 32) -> dict:
    return {"double_z": False, "z_channels": 16, "resolution": resolution, "in_channels": 3, "out_ch": 3,
            "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


def taming_modules(ddconfig: dict, embed_dim: int = 16, n_embed: int = 64, seed: int = 0) -> torch.nn.ModuleDict:
    """The submodules of taming's VQModel, built straight from taming.modules (the reference)."""
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2

    torch.manual_seed(seed)
    modules = torch.nn.ModuleDict({
        "encoder": Encoder(**ddconfig), "decoder": Decoder(**ddconfig),
        "quantize": VectorQuantizer2(n_embed, embed_dim, beta=0.25, sane_index_shape=True),
        "quant_conv": torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1),
        "post_quant_conv": torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1),
    })
    # a random codebook of the latents' scale, so many codes are in use (taming's init is ~1/n_embed)
    modules["quantize"].embedding.weight.data.normal_(0.0, 0.5)
    return modules.eval()


def taming_yaml(ddconfig: dict, embed_dim: int = 16, n_embed: int = 64) -> str:
    """A config in the layout of taming's configs/*.yaml (lossconfig included, as published)."""
    loss = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
            "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 10000,
                       "disc_weight": 0.8, "codebook_weight": 1.0}}
    params = {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": ddconfig, "lossconfig": loss}
    doc = {"model": {"base_learning_rate": 4.5e-06, "target": "taming.models.vqgan.VQModel", "params": params}}
    return yaml.safe_dump(doc, sort_keys=False)


def write_taming_checkpoint(tmp: Path, resolution: int = 32, embed_dim: int = 16, n_embed: int = 64,
                            seed: int = 0) -> tuple[Path, Path, torch.nn.ModuleDict]:
    """Save ``model.yaml`` + ``last.ckpt`` as taming/Lightning do; returns (yaml, ckpt, reference modules)."""
    dd = tiny_ddconfig(resolution)
    ref = taming_modules(dd, embed_dim, n_embed, seed)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["loss.logvar"] = torch.zeros(())
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 8, 1, 1)
    ckpt = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.0.8", "state_dict": state,
            "optimizer_states": [], "lr_schedulers": []}
    tmp.mkdir(parents=True, exist_ok=True)
    yaml_path, ckpt_path = tmp / "model.yaml", tmp / "last.ckpt"
    yaml_path.write_text(taming_yaml(dd, embed_dim, n_embed))
    torch.save(ckpt, ckpt_path)
    return yaml_path, ckpt_path, ref


def reference_codes(ref: torch.nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    """taming's VQModel.encode: encoder -> quant_conv -> quantize -> indices (B, h, w)."""
    with torch.no_grad():
        _, _, (_, _, indices) = ref["quantize"](ref["quant_conv"](ref["encoder"](x)))
    return indices


def reference_decode(ref: torch.nn.ModuleDict, codes: torch.Tensor, embed_dim: int = 16) -> torch.Tensor:
    """taming's VQModel.decode_code path: codebook lookup -> post_quant_conv -> decoder."""
    b, h, w = codes.shape
    with torch.no_grad():
        z_q = ref["quantize"].get_codebook_entry(codes.reshape(-1), (b, h, w, embed_dim))
        return ref["decoder"](ref["post_quant_conv"](z_q))


def moving_square_frames(length: int = 24, size: int = 32, still_until: int = 0, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a textured background with a bright square that moves after ``still_until``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
    frames = np.repeat(base[None], length, axis=0)
    for t in range(length):
        x = 2 + max(0, t - still_until) * 2 % (size - 10)
        frames[t, 8:16, x:x + 8] = 255
    return frames


def tiny_episode(length: int = 24, size: int = 32, cameras: tuple[str, ...] = ("agentview",)) -> Episode:
    rgb = {cam: moving_square_frames(length, size, seed=i) for i, cam in enumerate(cameras)}
    actions = np.zeros((length, 7), np.float32)
    return Episode(id="ep_0", source="test", fps=10.0, rgb=rgb, actions=actions, language="push the square")
