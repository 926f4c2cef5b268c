"""The stage contract (openpi-transform style).

A stage is a frozen dataclass holding only parameters, called as ``stage(item) -> item``. The item is a
plain dict that flows through an explicit, ordered list of stages for one episode:

    item = {
        "episode": Episode,            # decoded once; every stage reads the same frames
        "windows": list[Window],       # the training windows of this episode
        "samples": list[dict],         # one per window: {"__key__": ..., field: np.ndarray | json}
        "episode_fields": dict,        # per-episode arrays for the Zarr store (beyond the Episode's own)
    }

Representation stages add fields to every sample (``sample["fast.tokens"] = ...``) and may add
per-episode arrays to ``episode_fields``. A stage must be deterministic for a fixed config. Its
``name`` and ``config_hash()`` go into the job manifest.

Stages are registered by name in ``motiondata.pipeline.registry`` and built from the spec's
``stages:`` list, e.g. ``{"name": "fast", "tokenizer": "tokenizers/fast/demo"}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Window:
    """Frames ``start .. start + length - 1`` of an episode (``length`` may run short at the end)."""

    index: int
    start: int
    length: int

    @property
    def stop(self) -> int:
        return self.start + self.length


class Stage(Protocol):
    name: str

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]: ...

    def config_hash(self) -> str: ...


def config_hash_of(obj: Any) -> str:
    """Stable short hash of a dataclass's parameters (or any JSON-able value)."""
    payload = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_windows(length: int, window: int, stride: int, keep_short: bool = True) -> list[Window]:
    """Windows of ``window`` frames every ``stride`` frames. A final short window is kept when the
    episode is shorter than one window (so no episode is lost)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1")
    starts = list(range(0, max(length - window, 0) + 1, stride))
    windows = [Window(i, s, min(window, length - s)) for i, s in enumerate(starts)]
    if not keep_short:
        windows = [w for w in windows if w.length == window]
    return windows
