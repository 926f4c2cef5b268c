"""Depth providers for 3D scene flow.

A provider turns one camera's frames (and its sensor depth, if any) into a ``(T, H, W) float32`` depth
map, or ``None`` when no depth can be had. Invalid depth is 0 or NaN and is never filled in.

- :class:`SensorDepth`: the episode's own depth (metres); ``source = "sensor"``.
- :class:`MonocularDepth`: a monocular depth model from a local directory, either a transformers
  depth-estimation model (``AutoModelForDepthEstimation`` + ``AutoImageProcessor``: Depth Anything, DPT,
  ZoeDepth, ...) or the project's tiny demo network (``tokenizers/depth/demo``, see ``tiny_depth``).
  ``source = "model:metric"`` (metres) or ``"model:relative"``: relative models that predict disparity
  (DPT/MiDaS, Depth Anything) are turned into a relative depth whose median over the episode is 1
  (``d = median(disp) / disp``).
- :class:`NoDepth`: no depth; ``source = "missing"``. The depth channel of the flow is then zero and
  flagged missing, never invented.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

DISPARITY_MODEL_TYPES = ("dpt", "depth_anything", "prompt_depth_anything")
METRIC, RELATIVE = "model:metric", "model:relative"


class DepthProvider(Protocol):
    source: str

    def estimate(self, frames: np.ndarray, sensor: np.ndarray | None) -> np.ndarray | None: ...


@dataclass(frozen=True)
class SensorDepth:
    source: str = "sensor"

    def estimate(self, frames: np.ndarray, sensor: np.ndarray | None) -> np.ndarray | None:
        if sensor is None:
            raise ValueError("depth: SensorDepth needs the episode's depth.<camera>; pick a camera with "
                             "depth, or use depth='model' with depth_model=<local path>, or depth='none'")
        return np.asarray(sensor, dtype=np.float32)


@dataclass(frozen=True)
class NoDepth:
    source: str = "missing"

    def estimate(self, frames: np.ndarray, sensor: np.ndarray | None) -> np.ndarray | None:
        return None


@functools.lru_cache(maxsize=4)
def load_depth_model(path: str, device: str) -> tuple[Any, Any]:
    """Load (model, image processor) once per process from a local directory (no network)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from motiondata.encode.base import prepare_module, resolve_device

    if not Path(path).is_dir():
        raise FileNotFoundError(f"depth_model: {path!r} is not a directory; save a transformers "
                                "depth-estimation model there with save_pretrained() (weights are never downloaded)")
    processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=True)
    torch_device = resolve_device(device)
    model = prepare_module(model, torch_device, next(model.parameters()).dtype)
    log.info("loaded depth model %s (%s) on %s", path, model.config.model_type, torch_device)
    return model, processor


def predicts_disparity(config: Any) -> bool:
    """Relative DPT / Depth Anything checkpoints predict (affine) inverse depth; metric ones don't."""
    if getattr(config, "depth_estimation_type", "relative") == "metric":
        return False
    return getattr(config, "model_type", "") in DISPARITY_MODEL_TYPES


def disparity_to_depth(disp: np.ndarray) -> np.ndarray:
    """Relative depth ``median(disp) / disp`` over the whole clip (one scale, so deltas stay coherent);
    non-positive disparity is invalid (0)."""
    disp = np.asarray(disp, dtype=np.float32)
    good = np.isfinite(disp) & (disp > 0)
    if not good.any():
        return np.zeros_like(disp)
    scale = float(np.median(disp[good]))
    return np.where(good, scale / np.where(good, disp, 1.0), 0.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _transformers_config(path: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=True)


@dataclass(frozen=True)
class MonocularDepth:
    """Depth from a monocular model saved in the local directory ``path``: a transformers
    depth-estimation model or a ``tiny_depth`` directory (``tiny_depth.json`` + ``model.safetensors``).
    ``output``: ``"auto"`` (from the model's config), ``"depth"`` (metric) or ``"disparity"`` (relative)."""

    path: str
    device: str = "auto"
    batch_size: int = 8
    output: str = "auto"

    def __post_init__(self) -> None:
        if self.output not in ("auto", "depth", "disparity"):
            raise ValueError(f"output {self.output!r}: use 'auto', 'depth' or 'disparity'")

    @property
    def tiny(self) -> bool:
        from motiondata.encode.tiny_depth import is_tiny_depth_dir

        return is_tiny_depth_dir(self.path)

    def disparity(self) -> bool:
        if self.output != "auto":
            return self.output == "disparity"
        return False if self.tiny else predicts_disparity(_transformers_config(str(self.path)))

    @property
    def source(self) -> str:
        """``"model:metric"`` or ``"model:relative"`` (``"model"`` while the directory is unreadable)."""
        try:
            if self.tiny and self.output == "auto":
                from motiondata.encode.tiny_depth import CONFIG_NAME, TinyDepthConfig

                return METRIC if TinyDepthConfig.from_json(Path(self.path) / CONFIG_NAME).metric else RELATIVE
            return RELATIVE if self.disparity() else METRIC
        except (OSError, ValueError):
            return "model"

    def load(self) -> MonocularDepth:
        """Load the model now (a preflight check: a wrong path or a broken directory fails before any work)."""
        self._check_dir()
        if self.tiny:
            from motiondata.encode.base import resolve_device
            from motiondata.encode.tiny_depth import load_tiny_depth

            load_tiny_depth(str(self.path), str(resolve_device(self.device)))
        else:
            load_depth_model(str(self.path), str(self.device))
        return self

    def _check_dir(self) -> None:
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"depth_model: {self.path!r} is not a directory; use tokenizers/depth/demo or save "
                                    "a transformers depth-estimation model there with save_pretrained()")

    def estimate(self, frames: np.ndarray, sensor: np.ndarray | None = None) -> np.ndarray:
        self._check_dir()
        if self.tiny:
            from motiondata.encode.base import resolve_device
            from motiondata.encode.tiny_depth import load_tiny_depth, predict_depth

            model = load_tiny_depth(str(self.path), str(resolve_device(self.device)))
            raw = predict_depth(model, frames, max(self.batch_size, 1))
        else:
            raw = self._transformers(frames)
        return disparity_to_depth(raw) if self.disparity() else raw

    def _transformers(self, frames: np.ndarray) -> np.ndarray:
        import torch

        from motiondata.encode.base import inference_mode

        model, processor = load_depth_model(str(self.path), str(self.device))
        device = next(model.parameters()).device
        h, w = frames.shape[1:3]
        out = []
        for i in range(0, len(frames), self.batch_size):
            inputs = processor(images=list(frames[i: i + self.batch_size]), return_tensors="pt").to(device)
            with inference_mode(device):
                pred = model(**inputs).predicted_depth
            if pred.ndim == 3:
                pred = pred[:, None]
            pred = torch.nn.functional.interpolate(pred.float(), size=(h, w), mode="bilinear", align_corners=False)
            out.append(pred[:, 0].cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def select_depth(mode: str, has_sensor: bool, depth_model: str | None, device: str = "auto") -> DepthProvider:
    """``mode``: ``"auto"`` (sensor, else model if ``depth_model``, else none), ``"sensor"``, ``"model"``
    or ``"none"``."""
    if mode == "auto":
        mode = "sensor" if has_sensor else ("model" if depth_model else "none")
    if mode == "sensor":
        if not has_sensor:
            raise ValueError("depth='sensor' but the camera has no depth.<camera>; use depth='auto'")
        return SensorDepth()
    if mode == "model":
        if not depth_model:
            raise ValueError("depth='model' needs depth_model=<local directory>: tokenizers/depth/demo (the shipped "
                             "demo) or a transformers depth-estimation model saved with save_pretrained()")
        return MonocularDepth(str(depth_model), device=device)
    if mode == "none":
        return NoDepth()
    raise ValueError(f"depth {mode!r}: use 'auto', 'sensor', 'model' or 'none'")
