"""Learned motion tokens between consecutive latents (plugin stage ``motion_tokens``; LaMo's Midway-style
``m_t = f_inv(z_t, z_{t+1})``), behind a small interface any inverse-dynamics / latent-action model can fill.

    stages:
      - {name: vae, model: tokenizers/vae/demo-wan, cameras: [top], scope: episode}
      - {name: motion_tokens, model: tokenizers/idm/demo}          # reads vae.latents (source: vae)

A model folder holds ``config.json`` and ``model.safetensors`` (never a pickle). ``config["kind"]`` picks
the loader: ``"tiny_idm"`` is the demo model below (motiondata.encode.train_tiny_idm trains it); any
``"package.module:factory"`` is a plugin: ``factory(folder, device)`` returns a :class:`MotionTokenizer`.

The stage reads the latent table ``<source>.latents`` (and ``<source>.latents.<cam>``; axis ``latent``,
i.e. the vae stage's ``scope: episode``) and writes, for every pair of consecutive latent rows
``(z_k, z_{k+1})``, at the frame of ``z_{k+1}`` (axis ``latent``):

    <as>.codes[.<cam>]     rows (levels, tokens) int32     residual-VQ code ids, coarse level first
    <as>.vectors[.<cam>]   rows (levels, tokens, D) float16  (``vectors: true``) the continuous token at
                           each level: the sum of the codewords up to it (Midway's m^l = m^{l+1} + residual)

z_t itself is the vae table; nothing is copied. Default ``as`` = ``motion_tokens``.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from motiondata.encode.base import EncoderMixin, inference_mode, model_cache, resolve_device
from motiondata.encode.hf_local import ModelDirError, hash_with_files, model_dir, read_config
from motiondata.pipeline.tables import Table

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
CONFIG_KEYS = ("in_channels", "hidden", "tokens", "dim", "levels", "codebook_size")


@runtime_checkable
class MotionTokenizer(Protocol):
    """An inverse-dynamics model: consecutive latents -> discrete motion tokens.

    ``encode(z_t, z_next)``: ``(N, C, h, w)`` float32 each -> ``(N, levels, tokens)`` int codes.
    Optionally ``embed(codes) -> (N, levels, tokens, D)`` float32 (the continuous tokens per level).
    """

    levels: int
    tokens: int

    def encode(self, z_t: np.ndarray, z_next: np.ndarray) -> np.ndarray: ...


class TinyIdm(nn.Module):
    """Demo inverse/forward dynamics pair with a residual VQ bottleneck (``levels`` codebooks).

    Inverse: conv over ``[z_t, z_next - z_t]``, global mean pool, linear -> ``tokens`` vectors of ``dim``;
    each level quantises what the coarser levels left. Forward (training only): ``z_t`` + the quantised
    tokens -> ``z_next``.
    """

    def __init__(self, in_channels: int = 16, hidden: int = 32, tokens: int = 4, dim: int = 8, levels: int = 3,
                 codebook_size: int = 64):
        super().__init__()
        self.config = {"in_channels": in_channels, "hidden": hidden, "tokens": tokens, "dim": dim,
                       "levels": levels, "codebook_size": codebook_size}
        self.encoder = nn.Sequential(nn.Conv2d(2 * in_channels, hidden, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU())
        self.head = nn.Linear(hidden, tokens * dim)
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * 0.1)
        self.fwd_in = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.fwd_m = nn.Linear(tokens * dim, hidden)
        self.fwd_out = nn.Sequential(nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(hidden, in_channels, 3, padding=1))

    def features(self, z_t: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        """Continuous motion tokens ``(N, tokens, dim)`` before quantisation."""
        h = self.encoder(torch.cat([z_t, z_next - z_t], dim=1)).mean(dim=(2, 3))
        return self.head(h).view(len(z_t), self.config["tokens"], self.config["dim"])

    def quantize(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Residual VQ: codes ``(N, L, tokens)``, cumulative vectors ``(N, L, tokens, dim)``, and each
        level's residual input (for the codebook loss)."""
        residual, total = m, torch.zeros_like(m)
        codes, cumulative, residuals = [], [], []
        for book in self.codebooks:
            distances = (residual[..., None, :] - book).pow(2).sum(-1)  # (N, tokens, K)
            idx = distances.argmin(dim=-1)
            q = book[idx]
            residuals.append(residual)
            codes.append(idx)
            total = total + q
            cumulative.append(total)
            residual = residual - q
        return torch.stack(codes, 1), torch.stack(cumulative, 1), residuals

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(N, L, tokens)`` -> cumulative vectors ``(N, L, tokens, dim)``."""
        per_level = torch.stack([self.codebooks[level][codes[:, level]] for level in range(codes.shape[1])], 1)
        return per_level.cumsum(dim=1)

    def predict(self, z_t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Forward dynamics: ``z_t`` and tokens ``(N, tokens, dim)`` -> predicted ``z_next``."""
        h = self.fwd_in(z_t) + self.fwd_m(m.flatten(1))[:, :, None, None]
        return z_t + self.fwd_out(h)


class TinyIdmTokenizer:
    """:class:`MotionTokenizer` over a :class:`TinyIdm` loaded from a folder."""

    def __init__(self, model: TinyIdm, device: torch.device, batch_size: int = 256):
        self.model, self.device, self.batch_size = model, device, batch_size
        self.levels, self.tokens = model.config["levels"], model.config["tokens"]
        self.in_channels = model.config["in_channels"]

    @classmethod
    def load(cls, folder: Path, device: torch.device) -> "TinyIdmTokenizer":
        from safetensors.torch import load_file

        config = read_config(folder, "motion_tokens")
        missing = [k for k in CONFIG_KEYS if not isinstance(config.get(k), int)]
        if missing or not (folder / WEIGHTS).is_file():
            raise ModelDirError(f"motion_tokens stage: {folder} lacks {missing or WEIGHTS}; retrain it with "
                                "python -m motiondata.encode.train_tiny_idm --out FOLDER")
        model = TinyIdm(**{k: config[k] for k in CONFIG_KEYS})
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
        model.eval().requires_grad_(False)
        return cls(model.to(device), device)

    def _check(self, z: np.ndarray) -> None:
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise ValueError(f"motion_tokens: latents of shape {z.shape}, the model takes (N, {self.in_channels}, "
                             "h, w); use a model trained on this VAE's latents")

    def encode(self, z_t: np.ndarray, z_next: np.ndarray) -> np.ndarray:
        self._check(z_t)
        out = []
        with inference_mode(self.device):
            for s in range(0, len(z_t), self.batch_size):
                a = torch.from_numpy(np.ascontiguousarray(z_t[s:s + self.batch_size], np.float32)).to(self.device)
                b = torch.from_numpy(np.ascontiguousarray(z_next[s:s + self.batch_size], np.float32)).to(self.device)
                out.append(self.model.quantize(self.model.features(a, b))[0].cpu().numpy())
        return np.concatenate(out).astype(np.int32) if out else np.zeros((0, self.levels, self.tokens), np.int32)

    def embed(self, codes: np.ndarray) -> np.ndarray:
        with inference_mode(self.device):
            return self.model.embed(torch.from_numpy(np.asarray(codes, np.int64)).to(self.device)).cpu().numpy()


@model_cache(maxsize=4)
def load_motion_tokenizer(path: str, device: str = "cpu") -> MotionTokenizer:
    """The tokenizer in ``path`` (``config.json`` ``kind``: ``tiny_idm`` or ``package.module:factory``)."""
    folder = model_dir(path, "motion_tokens")
    kind = str(read_config(folder, "motion_tokens").get("kind", ""))
    if kind == "tiny_idm":
        return TinyIdmTokenizer.load(folder, torch.device(device))
    if ":" not in kind:
        raise ModelDirError(f"motion_tokens stage: {folder}/config.json has kind {kind!r}; use 'tiny_idm' or a "
                            "plugin 'package.module:factory' returning a MotionTokenizer")
    module, _, attr = kind.partition(":")
    try:
        tokenizer = getattr(importlib.import_module(module), attr)(folder, torch.device(device))
    except (ImportError, AttributeError) as exc:
        raise ModelDirError(f"motion_tokens stage: cannot import {kind} ({exc}); install the package that "
                            "provides it") from exc
    if not isinstance(tokenizer, MotionTokenizer):
        raise ModelDirError(f"motion_tokens stage: {kind} returned {type(tokenizer).__name__}, not a "
                            "MotionTokenizer (levels, tokens, encode(z_t, z_next)); fix the factory")
    return tokenizer


def save_tiny_idm(model: TinyIdm, folder: str | Path, info: dict | None = None) -> Path:
    """``config.json`` + ``model.safetensors`` (+ ``training.json``) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / WEIGHTS).chmod(0o644)
    (folder / "config.json").write_text(json.dumps({"kind": "tiny_idm", "format_version": 1, **model.config},
                                                   indent=2, sort_keys=True) + "\n")
    if info is not None:
        (folder / "training.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return folder


@dataclass(frozen=True)
class MotionTokensStage(EncoderMixin):
    """Plugin stage ``motion_tokens`` (see the module docstring). Recipe mode only (``build_tables``)."""

    model: str
    source: str = "vae"  # the latent tables to read: <source>.latents*
    vectors: bool = True
    name: str = "motion_tokens"
    num_gpus = 0.25  # GPUs per model copy in a Ray actor pool (class attribute, not a parameter)
    device: str = "auto"
    prefix: str | None = None  # `as:`: tables <prefix>.codes / <prefix>.vectors (default motion_tokens)

    def config_hash(self) -> str:
        return hash_with_files(self, self.model)

    def load(self) -> MotionTokenizer:
        return load_motion_tokenizer(self.model, str(resolve_device(self.device)))

    def _sources(self, tables: dict[str, Table]) -> list[str]:
        base = f"{self.source}.latents"
        names = [n for n in sorted(tables) if n == base or n.startswith(base + ".")]
        if not names:
            raise KeyError(f"motion_tokens stage: no {base} table; list a vae stage (as: {self.source}, "
                           "scope: episode) before the motion_tokens stage")
        return names

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        tables, f32, prefix = item["tables"], item.get("f32", {}), self.prefix or "motion_tokens"
        tokenizer = self.load()
        for name in self._sources(tables):
            table = tables[name]
            if table.axis != "latent":
                raise ValueError(f"motion_tokens stage: {name} is on the {table.axis} axis; motion tokens need "
                                 "per-latent-frame latents: set `scope: episode` on the vae stage")
            z = np.asarray(f32.get(name, table.values), np.float32)
            codes = tokenizer.encode(z[:-1], z[1:]) if len(z) > 1 else \
                np.zeros((0, tokenizer.levels, tokenizer.tokens), np.int32)
            suffix, frames = name[len(f"{self.source}.latents"):], table.frames[1:]
            tables[f"{prefix}.codes{suffix}"] = Table(codes.astype(np.int32), frames, "latent")
            if self.vectors and callable(getattr(tokenizer, "embed", None)):
                tables[f"{prefix}.vectors{suffix}"] = Table(tokenizer.embed(codes).astype(np.float16), frames,
                                                            "latent")
        return item


__all__ = ["MotionTokenizer", "MotionTokensStage", "TinyIdm", "TinyIdmTokenizer", "load_motion_tokenizer",
           "save_tiny_idm"]
