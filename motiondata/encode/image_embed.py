"""Frozen image embeddings from any transformers vision encoder in a local directory (plugin stage
``image_embed``; CLaD's and CoWVLA's frozen visual encoders).

    stages:
      - {name: image_embed, model: tokenizers/vision/demo-siglip, cameras: [top], pooled: true}
      # real: a local copy of google/siglip-base-patch16-224, openai/clip-vit-base-patch32, facebook/dinov2-small

The folder holds a model saved with ``save_pretrained`` (``config.json`` + weights) and its
``preprocessor_config.json``. The class is the one ``config.json`` names (``SiglipVisionModel``,
``CLIPVisionModelWithProjection``, ``Dinov2Model``, a full ``SiglipModel`` / ``CLIPModel`` whose image
tower is used, ...), else ``AutoModel``; frames go through the folder's own image processor.

Tables (one per camera, named ``<as>.<camera>``, default ``as`` = ``image_embed``), float16:

- ``pooled: true``  -> rows ``(E,)``: ``image_embeds`` (CLIP with projection), else ``pooler_output``
  (SigLIP's attention-pooled head, CLIP's / DINOv2's normalised CLS), else the mean of the last hidden state;
- ``pooled: false`` -> rows ``(P, E)``: the patch tokens of the last hidden state (CLS / register tokens dropped).

Rows are computed at the frames the recipe reads (or every ``stride`` frames). When that is every frame
the table's axis is ``frame``; otherwise ``keyframe`` (exact lookup at the computed frames).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from motiondata.encode.base import EncoderMixin, inference_mode, model_cache, prepare_module, resolve_device, \
    resolve_dtype
from motiondata.encode.hf_local import ModelDirError, hash_with_files, model_dir, quiet_loading, read_config, \
    transformers_class
from motiondata.pipeline.tables import Table, needed_frames

log = logging.getLogger(__name__)


@model_cache(maxsize=4)
def load_vision_encoder(path: str, device: str, dtype: str) -> tuple[Any, Any]:
    """(model, image processor) from a local ``save_pretrained`` folder, once per process."""
    from transformers import AutoImageProcessor, AutoModel

    folder = model_dir(path, "image_embed")
    arch = (read_config(folder, "image_embed").get("architectures") or [None])[0]
    cls = transformers_class(arch) or AutoModel
    if not (folder / "preprocessor_config.json").is_file():
        raise ModelDirError(f"image_embed stage: {folder} has no preprocessor_config.json; save the model's image "
                            "processor into the folder too (processor.save_pretrained(folder))")
    log.info("loading vision encoder %s (%s) on %s/%s", folder, cls.__name__, device, dtype)
    with quiet_loading():
        model = cls.from_pretrained(str(folder), local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    return prepare_module(model, torch.device(device), resolve_dtype(dtype)), processor


def _is_dual_tower(model: Any) -> bool:
    """A full CLIP / SigLIP model (image and text towers): use its image features."""
    return hasattr(model, "get_image_features") and hasattr(model, "vision_model")


def _patch_tokens(model: Any, hidden: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The last ``(H / patch) * (W / patch)`` tokens: patch tokens without CLS / register tokens."""
    config = getattr(model.config, "vision_config", model.config)
    patch = getattr(config, "patch_size", None)
    if not patch:
        return hidden
    count = (pixels.shape[-2] // int(patch)) * (pixels.shape[-1] // int(patch))
    return hidden[:, -count:] if 0 < count <= hidden.shape[1] else hidden


def embed_pixels(model: Any, pixels: torch.Tensor, pooled: bool) -> torch.Tensor:
    """``(N, 3, H, W)`` processed pixels -> ``(N, E)`` pooled or ``(N, P, E)`` patch embeddings."""
    if _is_dual_tower(model):
        out = model.get_image_features(pixel_values=pixels)
        if torch.is_tensor(out):  # older transformers: the projected embedding itself
            return out if pooled else _patch_tokens(model, model.vision_model(pixel_values=pixels)
                                                    .last_hidden_state, pixels)
    else:
        out = model(pixel_values=pixels)
    if not pooled:
        return _patch_tokens(model, out.last_hidden_state, pixels)
    for key in ("image_embeds", "pooler_output"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    return out.last_hidden_state.mean(dim=1)


@dataclass(frozen=True)
class ImageEmbedStage(EncoderMixin):
    """Plugin stage ``image_embed`` (see the module docstring). Recipe mode only (``build_tables``)."""

    model: str
    cameras: list | None = None
    pooled: bool = True
    stride: int | None = None  # a row every N frames (default: the frames the recipe reads)
    name: str = "image_embed"
    num_gpus = 0.5  # GPUs per model copy in a Ray actor pool (class attribute, not a parameter)
    device: str = "auto"
    dtype: str = "fp32"
    batch_size: int = 32
    prefix: str | None = None  # `as:`: tables <prefix>.<camera> (default image_embed)

    def __post_init__(self) -> None:
        if self.stride is not None and int(self.stride) < 1:
            raise ValueError(f"stride {self.stride} must be >= 1 (or omitted: the frames the recipe reads)")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    def config_hash(self) -> str:
        return hash_with_files(self, self.model)

    def load(self) -> tuple[Any, Any]:
        return load_vision_encoder(self.model, str(resolve_device(self.device)), self.dtype)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3) uint8`` -> float32 ``(N, E)`` (pooled) or ``(N, P, E)``, in batches."""
        model, processor = self.load()
        device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
        out = []
        for start in range(0, len(frames), self.batch_size):
            batch = [np.ascontiguousarray(f) for f in frames[start:start + self.batch_size]]
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device=device, dtype=dtype)
            with inference_mode(device):
                out.append(embed_pixels(model, pixels, self.pooled).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def build_tables(self, item: dict[str, Any]) -> dict[str, Any]:
        """``<as>.<camera>`` per camera: rows at the needed frames (axis frame when that is every frame)."""
        episode, prefix = item["episode"], self.prefix or "image_embed"
        cams = list(self.cameras) if self.cameras else episode.cameras
        missing = [c for c in cams if c not in episode.rgb]
        if missing:
            raise KeyError(f"image_embed stage: camera(s) {missing} not in episode {episode.id!r} (has "
                           f"{episode.cameras}); fix the stage's `cameras` list")
        for cam in cams:
            name = f"{prefix}.{cam}"
            frames = needed_frames(item, name, self.stride)
            values = self.encode(episode.rgb[cam][frames]).astype(np.float16)
            axis = "frame" if frames == list(range(episode.length)) else "keyframe"
            item["tables"][name] = Table(values, np.asarray(frames, dtype=np.int64), axis)
        return item


__all__ = ["ImageEmbedStage", "embed_pixels", "load_vision_encoder"]
