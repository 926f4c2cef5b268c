"""The in-memory episode: one robot demonstration or one video clip, validated on construction.

Conventions (every reader produces exactly these):
- ``rgb[camera]``: ``(T, H, W, 3) uint8``; ``depth[camera]``: ``(T, H, W) float32`` metres (0 or NaN = invalid).
- ``state``, ``actions``, ``ee_pose``, ``joints``, ``gripper``: ``(T, D) float32``; actions are absent for
  plain video. ``ee_pose`` is xyz + quaternion xyzw per arm, concatenated (7 per arm).
- ``id``: a store-safe name (letters, digits, ``_`` and ``-``), unique inside one job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from motiondata.errors import EpisodeValidationError

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
VECTOR_FIELDS = ("state", "actions", "ee_pose", "joints", "gripper")


def safe_id(text: str) -> str:
    """Turn any string (a path, a demo key) into a store-safe episode id."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_")
    return cleaned or "episode"


@dataclass
class Episode:
    id: str
    source: str
    fps: float
    rgb: dict[str, np.ndarray]
    language: str = ""
    depth: dict[str, np.ndarray] = field(default_factory=dict)
    state: np.ndarray | None = None
    actions: np.ndarray | None = None
    ee_pose: np.ndarray | None = None
    joints: np.ndarray | None = None
    gripper: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def length(self) -> int:
        return int(next(iter(self.rgb.values())).shape[0]) if self.rgb else 0

    @property
    def cameras(self) -> list[str]:
        return sorted(self.rgb)

    def vectors(self) -> dict[str, np.ndarray]:
        """The per-step vector fields that are present (state, actions, ee_pose, joints, gripper)."""
        return {name: getattr(self, name) for name in VECTOR_FIELDS if getattr(self, name) is not None}

    def _fail(self, field_name: str, problem: str, fix: str) -> None:
        raise EpisodeValidationError(self.id, field_name, problem, fix)

    def validate(self) -> None:
        if not isinstance(self.id, str) or not ID_PATTERN.match(self.id):
            self._fail("id", f"{self.id!r} is not store-safe", "build ids with motiondata.episode.safe_id()")
        if not (isinstance(self.fps, (int, float)) and np.isfinite(self.fps) and self.fps > 0):
            self._fail("fps", f"{self.fps!r} is not a positive number", "pass the recording rate in frames/s")
        if not self.rgb:
            self._fail("rgb", "no camera", "give at least one camera's frames as (T, H, W, 3) uint8")
        length = self.length
        if length < 1:
            self._fail("rgb", "zero frames", "drop empty episodes before building an Episode")
        for cam, frames in self.rgb.items():
            self._check_array(f"rgb[{cam}]", frames, np.uint8, 4, length)
            if frames.shape[-1] != 3:
                self._fail(f"rgb[{cam}]", f"last axis is {frames.shape[-1]}, not 3", "convert frames to RGB")
        for cam, frames in self.depth.items():
            self._check_array(f"depth[{cam}]", frames, np.float32, 3, length)
            if cam in self.rgb and frames.shape[1:] != self.rgb[cam].shape[1:3]:
                self._fail(f"depth[{cam}]", f"size {frames.shape[1:]} differs from rgb {self.rgb[cam].shape[1:3]}",
                           "resize depth and rgb together")
        for name, values in self.vectors().items():
            self._check_array(name, values, np.float32, 2, length)
            if not np.isfinite(values).all():
                bad = np.argwhere(~np.isfinite(values))[0]
                self._fail(name, f"non-finite value at step {bad[0]}, dim {bad[1]}",
                           "clean or drop this episode; NaN/inf cannot be normalised")

    def _check_array(self, name: str, arr: Any, dtype: type, ndim: int, length: int) -> None:
        if not isinstance(arr, np.ndarray):
            self._fail(name, f"is {type(arr).__name__}, not a numpy array", "convert with np.asarray")
        if arr.dtype != dtype:
            self._fail(name, f"dtype {arr.dtype}, expected {np.dtype(dtype)}", f"cast with .astype(np.{np.dtype(dtype)})")
        if arr.ndim != ndim:
            self._fail(name, f"shape {arr.shape} has {arr.ndim} axes, expected {ndim}", "reshape to the documented layout")
        if arr.shape[0] != length:
            self._fail(name, f"{arr.shape[0]} steps but rgb has {length}",
                       "trim all fields to a common length or drop the episode")
