"""A timed stand-in for a GPU encoder (plugin stage ``tests.factories_scale:StandInEncoder``).

It declares ``num_gpus`` like a real model stage, sleeps ``sleep`` seconds per model call (one call per
batch of episodes through ``encode_items``, or per episode through ``__call__``), adds a deterministic
field ``<field>.mean`` to every sample, and appends one JSON line per call to ``log_dir/<pid>.jsonl``:
the process's Ray GPU ids, ``CUDA_VISIBLE_DEVICES``, start/end times and how many episodes it took.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.pipeline.stage import config_hash_of


def _gpu_ids() -> list[str]:
    try:
        import ray

        return [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
    except Exception:
        return []


@dataclass(frozen=True)
class StandInEncoder:
    sleep: float = 0.0
    log_dir: str | None = None
    gpus: float = 1.0
    field: str = "standin"
    name: str = "standin"

    @property
    def num_gpus(self) -> float:
        return self.gpus

    def config_hash(self) -> str:
        return config_hash_of({"sleep": self.sleep, "name": self.name, "field": self.field})  # log_dir/gpus do not change outputs

    def _log(self, start: float, episodes: int) -> None:
        if not self.log_dir:
            return
        line = {"pid": os.getpid(), "gpu_ids": _gpu_ids(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "start": start, "end": time.time(), "episodes": episodes}
        path = Path(self.log_dir) / f"{os.getpid()}.jsonl"
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    def _add(self, item: dict[str, Any]) -> dict[str, Any]:
        episode = item["episode"]
        frames = np.stack([f for f in episode.rgb.values()]) if episode.rgb else np.zeros((1, 1), np.uint8)
        for window, sample in zip(item["windows"], item["samples"]):
            chunk = frames[:, window.start:window.stop].astype(np.float32)
            sample[f"{self.field}.mean"] = np.asarray([chunk.mean(), chunk.std()], dtype=np.float32)
        return item

    def encode_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        start = time.time()
        time.sleep(self.sleep)
        out = [self._add(item) for item in items]
        self._log(start, len(items))
        return out

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return self.encode_items([item])[0]


def gpu_log(log_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(log_dir.glob("*.jsonl")) for line in path.read_text().splitlines()]
