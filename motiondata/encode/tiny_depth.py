"""A tiny monocular depth network (a small U-Net), the demo depth model shipped in ``tokenizers/depth/demo``.

It exists so that a spec can run the flow stage's model-depth path (``depth: model``) on data without
depth sensors (LIBERO) with no download; it is trained in under a minute on CPU by
``motiondata.encode.train_tiny_depth`` on the bundled simulator's sensor depth and is only good for
that scene. For real data use a transformers depth model (Depth Anything, DPT, ZoeDepth) from a local
directory; ``flow_depth.MonocularDepth`` accepts both.

A model directory holds ``tiny_depth.json`` (architecture, input size, whether the output is metric)
and ``model.safetensors``. Loading reads JSON and safetensors only (no pickle). The network sees the
frame resized to ``input_size``, predicts log-depth and a validity logit per pixel (the simulator's
void has no depth), and both are resized back to the frame; invalid pixels get depth 0.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

CONFIG_NAME, WEIGHTS_NAME = "tiny_depth.json", "model.safetensors"
ARCHITECTURE = "motiondata-tiny-depth-unet"


@dataclass(frozen=True)
class TinyDepthConfig:
    channels: tuple[int, ...] = (8, 16, 32, 48)
    input_size: tuple[int, int] = (64, 64)
    metric: bool = True
    architecture: str = ARCHITECTURE
    trained_on: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: Path) -> TinyDepthConfig:
        data = json.loads(path.read_text())
        if data.get("architecture") != ARCHITECTURE:
            raise ValueError(f"{path}: architecture {data.get('architecture')!r} is not {ARCHITECTURE!r}; "
                             "point depth_model at a directory written by motiondata.encode.train_tiny_depth")
        return cls(channels=tuple(data["channels"]), input_size=tuple(data["input_size"]),
                   metric=bool(data.get("metric", True)), trained_on=dict(data.get("trained_on", {})))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GELU(), nn.Conv2d(cout, cout, 3, 1, 1), nn.GELU())


class TinyDepthNet(nn.Module):
    """U-Net: one full-resolution block, three stride-2 blocks (with a global-context term at the
    bottom), three upsampling blocks with skips; out: log-depth and validity logit."""

    def __init__(self, config: TinyDepthConfig):
        super().__init__()
        c = list(config.channels)
        self.config = config
        self.down = nn.ModuleList([_block(3, c[0])] + [_block(c[i - 1], c[i], 2) for i in range(1, len(c))])
        self.context = nn.Linear(c[-1], c[-1])
        self.up = nn.ModuleList([_block(c[i] + c[i - 1], c[i - 1]) for i in range(len(c) - 1, 0, -1)])
        self.head = nn.Conv2d(c[0], 2, 1)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``rgb (B, 3, H, W)`` in [0, 1] -> ``(log_depth, valid_logit)``, each ``(B, H, W)``."""
        x = (rgb - 0.45) / 0.25
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = x + self.context(x.mean(dim=(2, 3)))[:, :, None, None]
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        out = self.head(x)
        return out[:, 0], out[:, 1]


def is_tiny_depth_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def save_tiny_depth(model: TinyDepthNet, path: str | Path) -> None:
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"architecture": ARCHITECTURE})
    (out / WEIGHTS_NAME).chmod(0o644)
    (out / CONFIG_NAME).write_text(model.config.to_json())


@functools.lru_cache(maxsize=4)
def load_tiny_depth(path: str, device: str = "cpu") -> TinyDepthNet:
    """Load once per process (JSON + safetensors, no pickle); eval mode on ``device``."""
    from safetensors.torch import load_file

    root = Path(path)
    config = TinyDepthConfig.from_json(root / CONFIG_NAME)
    model = TinyDepthNet(config)
    model.load_state_dict(load_file(str(root / WEIGHTS_NAME)))
    log.info("loaded tiny depth model %s (metric=%s) on %s", path, config.metric, device)
    return model.to(device).eval()


def to_input(frames: np.ndarray, size: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """``(T, H, W, 3) uint8`` -> ``(T, 3, h, w)`` float in [0, 1] at the network's ``size`` (area resize)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255.0
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="area")


@torch.no_grad()
def predict_depth(model: TinyDepthNet, frames: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """``(T, H, W) float32`` depth for ``frames (T, H, W, 3) uint8``; 0 where the model says no depth."""
    device = next(model.parameters()).device
    h, w = frames.shape[1:3]
    out = []
    for i in range(0, len(frames), batch_size):
        log_d, logit = model(to_input(frames[i: i + batch_size], model.config.input_size, device))
        both = F.interpolate(torch.stack([log_d, logit], 1), size=(h, w), mode="bilinear", align_corners=False)
        depth = torch.where(both[:, 1] > 0, both[:, 0].exp(), torch.zeros_like(both[:, 0]))
        out.append(depth.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, h, w), np.float32)
