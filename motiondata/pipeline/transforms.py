"""Episode transforms and the base sample stage (openpi style: frozen dataclasses, ``__call__``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from motiondata.episode import Episode
from motiondata.errors import SpecError
from motiondata.pipeline.stage import config_hash_of, plan_windows


@dataclass(frozen=True)
class SelectCameras:
    """Keep only the named cameras (in the given order); a missing camera is a clear error."""

    cameras: tuple[str, ...] | None = None

    def __call__(self, episode: Episode) -> Episode:
        if not self.cameras:
            return episode
        missing = [c for c in self.cameras if c not in episode.rgb]
        if missing:
            raise SpecError(f"episode {episode.id}: cameras {missing} not found; it has {episode.cameras}. "
                            "Fix `frames.cameras` in the spec.")
        rgb = {c: episode.rgb[c] for c in self.cameras}
        depth = {c: d for c, d in episode.depth.items() if c in rgb}
        return dataclasses.replace(episode, rgb=rgb, depth=depth)


RESIZE_MODES = ("crop", "pad", "stretch")


def prepare_transforms(spec) -> list:
    """The transforms every episode goes through right after its reader, in order (one place for the
    in-process builder and the streaming executor)."""
    return [SelectCameras(spec.cameras), Resize(spec.frame_size, spec.frame_mode or "crop")]


@dataclass(frozen=True)
class Resize:
    """Resize every camera to (height, width): RGB with area interpolation, depth with nearest neighbour
    (so invalid depth never blends into valid depth).

    ``mode`` (the spec's ``frames.mode``) says how a frame of another aspect ratio reaches the size:
    ``crop`` (default) scales it to cover the size keeping its aspect ratio and cuts the centre; ``pad`` scales
    it to fit inside and fills the borders with black (depth: 0, invalid); ``stretch`` scales each axis alone.
    """

    size: tuple[int, int] | None = None
    mode: str = "crop"

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise SpecError(f"frames.mode: {self.mode!r} is not one of {list(RESIZE_MODES)}; use crop (keep the "
                            "aspect ratio, centre crop), pad or stretch")

    def __call__(self, episode: Episode) -> Episode:
        if not self.size:
            return episode
        h, w = self.size
        rgb = {c: fit_stack(f, (h, w), self.mode, cv2.INTER_AREA) for c, f in episode.rgb.items()}
        depth = {c: fit_stack(d, (h, w), self.mode, cv2.INTER_NEAREST) for c, d in episode.depth.items()}
        return dataclasses.replace(episode, rgb=rgb, depth=depth)


def fit_box(src: tuple[int, int], dst: tuple[int, int], mode: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((scaled_h, scaled_w), (top, left))``: the size ``src`` (h, w) is scaled to and where the ``dst``
    window starts in it (crop: offsets into the scaled frame; pad: negative, the border around it)."""
    (sh, sw), (dh, dw) = src, dst
    if mode == "stretch" or (sh * dw == sw * dh):
        return (dh, dw), (0, 0)
    scale = max(dh / sh, dw / sw) if mode == "crop" else min(dh / sh, dw / sw)
    rh, rw = max(1, round(sh * scale)), max(1, round(sw * scale))
    if mode == "crop":
        rh, rw = max(rh, dh), max(rw, dw)
    else:
        rh, rw = min(rh, dh), min(rw, dw)
    return (rh, rw), ((rh - dh) // 2, (rw - dw) // 2)


def fit_stack(frames: np.ndarray, size: tuple[int, int], mode: str, interp: int) -> np.ndarray:
    """(T, H, W[, C]) -> (T, *size[, C]) by ``mode`` (see :class:`Resize`)."""
    (rh, rw), (top, left) = fit_box(frames.shape[1:3], size, mode)
    scaled = _resize_stack(frames, (rw, rh), interp)
    if top >= 0 and left >= 0:
        return np.ascontiguousarray(scaled[:, top:top + size[0], left:left + size[1]])
    out = np.zeros((frames.shape[0], *size, *frames.shape[3:]), dtype=frames.dtype)
    out[:, -top:-top + rh, -left:-left + rw] = scaled
    return out


def _resize_stack(frames: np.ndarray, wh: tuple[int, int], interp: int) -> np.ndarray:
    if frames.shape[2] == wh[0] and frames.shape[1] == wh[1]:
        return frames
    return np.stack([cv2.resize(f, wh, interpolation=interp) for f in frames]).astype(frames.dtype)


@dataclass(frozen=True)
class WindowSamples:
    """Cut the episode into windows and start one sample per window with the base fields:
    ``rgb.<cam>``, ``depth.<cam>``, the vector fields and ``meta``."""

    length: int = 17
    stride: int = 8
    name: str = "windows"

    def config_hash(self) -> str:
        return config_hash_of(self)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        episode: Episode = item["episode"]
        windows = plan_windows(episode.length, self.length, self.stride)
        item["windows"] = windows
        item["samples"] = [self._sample(episode, w) for w in windows]
        item.setdefault("episode_fields", {})
        return item

    def _sample(self, episode: Episode, window) -> dict[str, Any]:
        sl = slice(window.start, window.stop)
        sample: dict[str, Any] = {"__key__": f"{episode.id}_w{window.index:04d}"}
        for cam, frames in episode.rgb.items():
            sample[f"rgb.{cam}"] = frames[sl]
        for cam, depth in episode.depth.items():
            sample[f"depth.{cam}"] = depth[sl]
        for name, values in episode.vectors().items():
            sample[name] = values[sl]
        sample["meta"] = {
            "episode": episode.id, "source": episode.source, "window": window.index,
            "start": window.start, "length": window.length, "fps": float(episode.fps),
            "language": episode.language, "frame_index": list(range(window.start, window.stop)),
            "episode_length": episode.length,
        }
        return sample
