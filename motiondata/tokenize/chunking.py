"""Action chunks: the next ``H`` actions from a start step, padded at the episode end with a mask.

``H`` is given in steps or in seconds (``round(seconds * fps)``; the FAST paper recommends 1-second chunks).
Padding repeats the last action (the robot holds still, openpi/LeRobot style) or writes zeros; the mask is
1 for real steps and 0 for padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from motiondata.errors import MotionDataError

PadMode = Literal["repeat", "zeros"]
PAD_MODES = ("repeat", "zeros")


class ChunkingError(MotionDataError, ValueError):
    """A chunking parameter is invalid."""


def horizon_steps(horizon: int | None = None, horizon_seconds: float | None = None,
                  fps: float | None = None) -> int:
    """Chunk length in steps: ``horizon_seconds * fps`` (rounded, at least 1) when seconds are given."""
    if horizon_seconds is not None:
        if not fps or fps <= 0:
            raise ChunkingError(f"horizon_seconds={horizon_seconds} needs a positive fps (got {fps}). "
                                "Fix: give the episode's fps or a horizon in steps")
        if horizon_seconds <= 0:
            raise ChunkingError(f"horizon_seconds must be > 0, got {horizon_seconds}")
        return max(1, int(round(horizon_seconds * fps)))
    if horizon is None or int(horizon) < 1:
        raise ChunkingError(f"horizon must be >= 1 step, got {horizon}. Fix: set horizon or horizon_seconds")
    return int(horizon)


def chunk_starts(length: int, stride: int = 1, complete_only: bool = False, horizon: int = 1) -> np.ndarray:
    """Start steps every ``stride`` steps; with ``complete_only`` only starts whose chunk needs no padding."""
    if stride < 1:
        raise ChunkingError(f"stride must be >= 1, got {stride}")
    last = length - horizon if complete_only else length - 1
    return np.arange(0, max(last, -1) + 1, stride, dtype=np.int64)


def chunks_at(actions: np.ndarray, starts: Sequence[int] | np.ndarray, horizon: int,
              pad: PadMode = "repeat") -> tuple[np.ndarray, np.ndarray]:
    """Chunks ``[N, H, D]`` starting at ``starts`` and their masks ``[N, H]`` uint8 (one gather, no loop)."""
    if pad not in PAD_MODES:
        raise ChunkingError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    actions = np.asarray(actions)
    if actions.ndim != 2 or len(actions) == 0:
        raise ChunkingError(f"actions have shape {actions.shape}; expected a non-empty (T, D) array")
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    if starts.size and (starts.min() < 0 or starts.max() >= len(actions)):
        raise ChunkingError(f"chunk starts must lie in [0, {len(actions)}), got {starts.min()}..{starts.max()}")
    index = starts[:, None] + np.arange(horizon)[None, :]
    mask = index < len(actions)
    chunks = actions[np.minimum(index, len(actions) - 1)]
    if pad == "zeros":
        chunks = np.where(mask[..., None], chunks, 0).astype(actions.dtype)
    return chunks, mask.astype(np.uint8)


@dataclass(frozen=True)
class ChunkSpec:
    """How to cut an episode's actions into chunks."""

    horizon: int | None = 10
    horizon_seconds: float | None = None
    stride: int = 1
    pad: str = "repeat"
    complete_only: bool = False

    def steps(self, fps: float | None = None) -> int:
        return horizon_steps(self.horizon, self.horizon_seconds, fps)

    def __call__(self, actions: np.ndarray, fps: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(chunks [N, H, D], masks [N, H] uint8, starts [N])`` for one episode."""
        h = self.steps(fps)
        starts = chunk_starts(len(actions), self.stride, self.complete_only, h)
        if starts.size == 0:
            empty = np.zeros((0, h, np.shape(actions)[-1]), np.asarray(actions).dtype)
            return empty, np.zeros((0, h), np.uint8), starts
        chunks, masks = chunks_at(actions, starts, h, self.pad)  # type: ignore[arg-type]
        return chunks, masks, starts
