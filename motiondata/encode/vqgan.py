"""taming-transformers VQGAN: load a published checkpoint, turn frames into code maps and back.

The module tree of :class:`TamingVQModel` is taming's ``VQModel`` minus its Lightning shell and loss, so
a taming checkpoint loads strictly: ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``,
``quantize.embedding.weight [n_embed, embed_dim]`` (``loss.*`` is dropped). The building blocks are
taming's own (``taming.modules``), so codes are exactly what taming computes.

Conventions: frames in are ``(N, H, W, 3) uint8``; the model sees ``[-1, 1]`` at ``resolution`` (resized
with antialiased bilinear interpolation when the frame size differs); codes out are ``(N, h, w) int32`` with
``h = H / 2 ** (len(ch_mult) - 1)``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from motiondata.encode.base import (batches, inference_mode, model_cache, prepare_module, resolve_device,
                                    resolve_dtype)
from motiondata.encode.safe_ckpt import load_checkpoint_state
from motiondata.store.layout import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

VQMODEL_TARGET = "taming.models.vqgan.VQModel"
DROPPED_PREFIXES = ("loss.",)
DDCONFIG_KEYS = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels",
                 "resolution", "z_channels")


@dataclass(frozen=True)
class VQGANConfig:
    """The parts of a taming YAML config that shape the model (``model.params``)."""

    embed_dim: int
    n_embed: int
    ddconfig: dict[str, Any]

    @property
    def resolution(self) -> int:
        return int(self.ddconfig["resolution"])

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)

    def to_yaml(self, lossconfig: dict[str, Any] | None = None) -> str:
        """The config in taming's layout (``model: {target, params}``), loadable by taming itself."""
        params = {"embed_dim": self.embed_dim, "n_embed": self.n_embed, "ddconfig": dict(self.ddconfig),
                  "lossconfig": lossconfig or {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}
        return yaml.safe_dump({"model": {"target": VQMODEL_TARGET, "params": params}}, sort_keys=False)


def parse_vqgan_config(text: str, source: str = "<config>") -> VQGANConfig:
    """Parse a taming VQGAN YAML (``model.params.{embed_dim, n_embed, ddconfig}``)."""
    doc = yaml.safe_load(text) or {}
    params = (doc.get("model") or {}).get("params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise ValueError(f"{source}: no 'model.params' mapping; expected a taming VQGAN config "
                         f"(model: {{target: {VQMODEL_TARGET}, params: {{embed_dim, n_embed, ddconfig}}}})")
    target = doc["model"].get("target", VQMODEL_TARGET)
    if target != VQMODEL_TARGET:
        raise ValueError(f"{source}: model.target is {target!r}; only {VQMODEL_TARGET} (plain VectorQuantizer "
                         "VQGAN) is supported")
    for key in ("embed_dim", "n_embed", "ddconfig"):
        if key not in params:
            raise ValueError(f"{source}: model.params.{key} is missing; copy it from the checkpoint's config")
    if params.get("remap") is not None:
        raise ValueError(f"{source}: model.params.remap is set; index remapping is not supported, drop it")
    ddconfig = dict(params["ddconfig"])
    missing = [k for k in DDCONFIG_KEYS if k not in ddconfig]
    if missing:
        raise ValueError(f"{source}: model.params.ddconfig lacks {missing}; see taming's vqgan configs")
    if ddconfig.get("double_z", False):
        raise ValueError(f"{source}: ddconfig.double_z is true; a VQGAN uses double_z: false")
    ddconfig["ch_mult"] = list(ddconfig["ch_mult"])
    ddconfig["attn_resolutions"] = list(ddconfig["attn_resolutions"])
    return VQGANConfig(int(params["embed_dim"]), int(params["n_embed"]), ddconfig)


def read_vqgan_config(path: str | Path) -> VQGANConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN config {path} not found; pass the taming YAML (e.g. model.yaml)")
    return parse_vqgan_config(path.read_text(), source=str(path))


class TamingVQModel(torch.nn.Module):
    """taming's ``VQModel`` without Lightning or loss: same submodules, same state_dict keys."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import VectorQuantizer2

        dd = {**config.ddconfig, "double_z": False}
        self.config = config
        self.encoder = Encoder(**dd)
        with contextlib.redirect_stdout(io.StringIO()) as said:  # taming's Decoder print()s the z shape
            self.decoder = Decoder(**dd)
        log.debug("taming Decoder: %s", said.getvalue().strip())
        # taming's VQModel imports VectorQuantizer2 as VectorQuantizer: same key (embedding.weight).
        self.quantize = VectorQuantizer2(config.n_embed, config.embed_dim, beta=0.25, sane_index_shape=True)
        self.quant_conv = torch.nn.Conv2d(dd["z_channels"], config.embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(config.embed_dim, dd["z_channels"], 1)

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] -> pre-quantisation latents ``(B, embed_dim, h, w)``."""
        return self.quant_conv(self.encoder(x))

    def quantize_latents(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest codebook entries (in float32): ``(z_q, vq_loss, indices (B, h, w) int64)``."""
        z_q, loss, (_, _, indices) = self.quantize(h.float())
        return z_q, loss, indices

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize_latents(self.encode_latents(x))[2]

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, h, w)`` -> images ``(B, 3, H, W)``, about [-1, 1]."""
        b, h, w = codes.shape
        z_q = self.quantize.get_codebook_entry(codes.reshape(-1).long(), (b, h, w, self.config.embed_dim))
        return self.decode_latents(z_q.to(self.post_quant_conv.weight.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_q, loss, indices = self.quantize_latents(self.encode_latents(x))
        return self.decode_latents(z_q.to(x.dtype)), loss, indices


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a taming/Lightning ``.ckpt`` (``["state_dict"]``, read by the restricted unpickler of
    :mod:`motiondata.encode.safe_ckpt`: nothing in the file runs) or a ``.safetensors`` file, ``loss.*`` dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN weights {path} not found; pass a taming .ckpt or a .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:  # a Lightning 1.x .ckpt pickles callbacks, hparams and optimizer state: read it without running any
        state = load_checkpoint_state(path)
    return {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}


def load_vqgan(config: str | Path | VQGANConfig, weights: str | Path, device: str = "cpu",
               dtype: str = "fp32") -> TamingVQModel:
    """Build the model from the taming YAML and load the weights strictly (eval mode, no grads)."""
    cfg = config if isinstance(config, VQGANConfig) else read_vqgan_config(config)
    model = TamingVQModel(cfg)
    state = read_state_dict(weights)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{weights}: weights do not match config {config}: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}; pair the checkpoint with its own YAML")
    model = prepare_module(model, resolve_device(device), resolve_dtype(dtype))
    model.quantize.float()  # nearest-code search stays float32 whatever the model dtype
    return model


def save_vqgan(model: TamingVQModel, out_dir: str | Path, lossconfig: dict[str, Any] | None = None) -> None:
    """Write ``model.yaml`` (taming layout) + ``model.safetensors`` into ``out_dir`` atomically."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": "pt", "layout": VQMODEL_TARGET})
    atomic_write_bytes(out_dir / "model.safetensors", data)
    atomic_write_text(out_dir / "model.yaml", model.config.to_yaml(lossconfig))


class VQGANCodec:
    """Frames <-> code maps with one loaded VQGAN (the first keyframe-encoder implementation)."""

    def __init__(self, model: TamingVQModel, size: int | None = None, batch_size: int = 16):
        self.model = model
        self.size = int(size or model.config.resolution)
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.dtype = model.post_quant_conv.weight.dtype

    @property
    def downsample(self) -> int:
        return self.model.config.downsample

    def code_shape(self) -> tuple[int, int]:
        side = self.size // self.downsample
        return side, side

    def to_model_input(self, frames: np.ndarray) -> torch.Tensor:
        """``(N, H, W, 3) uint8`` -> ``(N, 3, size, size)`` in [-1, 1] on the model's device/dtype."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return (x / 127.5 - 1.0).to(self.dtype)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3) uint8`` -> codes ``(N, h, w) int32``."""
        out = [np.zeros((0, *self.code_shape()), np.int32)]
        with inference_mode(self.device):
            for chunk in batches(frames, self.batch_size):
                codes = self.model.encode_codes(self.to_model_input(chunk))
                out.append(codes.to(torch.int32).cpu().numpy())
        return np.concatenate(out)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``(N, h, w)`` -> frames ``(N, size, size, 3) uint8``."""
        codes = np.asarray(codes)
        if codes.ndim != 3:
            raise ValueError(f"codes must be (N, h, w), got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.model.config.n_embed):
            raise ValueError(f"codes outside [0, {self.model.config.n_embed}); were they made by this model?")
        out = [np.zeros((0, self.size, self.size, 3), np.uint8)]
        with inference_mode(self.device):
            for chunk in batches(codes, self.batch_size):
                x = self.model.decode_codes(torch.from_numpy(chunk.astype(np.int64)).to(self.device))
                img = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
                out.append(img.permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)


@model_cache()
def cached_vqgan_codec(config: str, weights: str, device: str = "auto", dtype: str = "fp32",
                       size: int | None = None, batch_size: int = 16) -> VQGANCodec:
    """One codec per process for the same (config, weights, device, dtype, size, batch_size)."""
    log.info("loading VQGAN %s (%s) on %s/%s", weights, config, device, dtype)
    return VQGANCodec(load_vqgan(config, weights, device, dtype), size=size, batch_size=batch_size)
