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


@dataclass(frozen=True)
class Resize:
    """Resize every camera to (height, width): RGB with area interpolation, depth with nearest neighbour
    (so invalid depth never blends into valid depth)."""

    size: tuple[int, int] | None = None

    def __call__(self, episode: Episode) -> Episode:
        if not self.size:
            return episode
        h, w = self.size
        rgb = {c: _resize_stack(f, (w, h), cv2.INTER_AREA) for c, f in episode.rgb.items()}
        depth = {c: _resize_stack(d, (w, h), cv2.INTER_NEAREST) for c, d in episode.depth.items()}
        return dataclasses.replace(episode, rgb=rgb, depth=depth)


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
