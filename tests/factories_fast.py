"""Tiny inputs for the FAST tokenizer tests: smooth action chunks, episodes, stage items, stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from motiondata.episode import Episode
from motiondata.pipeline.stage import plan_windows


def smooth_chunks(n: int = 300, horizon: int = 10, dim: int = 7, seed: int = 0, step: float = 0.1,
                  dtype: type = np.float32) -> np.ndarray:
    """Random-walk chunks in about [-1, 1] (what normalised robot actions look like)."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-0.8, 0.8, size=(n, 1, dim))
    walk = start + np.cumsum(rng.normal(scale=step, size=(n, horizon, dim)), axis=1)
    return np.clip(walk, -1.2, 1.2).astype(dtype)


def smooth_actions(length: int = 40, dim: int = 7, seed: int = 0, amplitude: float = 3.0) -> np.ndarray:
    """One episode of raw (unnormalised) smooth actions ``(T, D)`` float32."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length)[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, dim))
    offset = rng.uniform(-1, 1, size=(1, dim))
    return (offset + amplitude * np.sin(2 * np.pi * t + phase)).astype(np.float32)


def make_episode(length: int = 40, dim: int = 14, seed: int = 0, fps: float = 10.0, with_actions: bool = True,
                 ee_pose: bool = False) -> Episode:
    vectors = {}
    if with_actions:
        vectors["actions"] = smooth_actions(length, dim, seed)
    if ee_pose:
        vectors["ee_pose"] = smooth_actions(length, 14, seed + 1, amplitude=0.2)
        vectors["gripper"] = smooth_actions(length, 2, seed + 2, amplitude=0.5)
    return Episode(id=f"ep{seed}", source="test", fps=fps, rgb={"cam": np.zeros((length, 4, 4, 3), np.uint8)},
                   **vectors)


def make_item(episode: Episode, window: int = 8, stride: int = 4) -> dict:
    windows = plan_windows(episode.length, window, stride)
    samples = [{"__key__": f"{episode.id}-{w.index:04d}"} for w in windows]
    return {"episode": episode, "windows": windows, "samples": samples, "episode_fields": {}}


def write_store(root: Path, episodes: list[Episode]) -> Path:
    """A minimal store: episodes.zarr/<id>/<field> arrays (plain zarr), no stats.json."""
    import zarr

    group = zarr.open_group(str(root / "episodes.zarr"), mode="w")
    for ep in episodes:
        sub = group.create_group(ep.id)
        for name, values in ep.vectors().items():
            sub.create_array(name, data=values)
    return root


def write_libero_hdf5(path: Path, episodes: list[np.ndarray]) -> Path:
    """``data/demo_<i>/actions`` as LIBERO / robomimic write it (plus the obs group a reader expects)."""
    import h5py

    with h5py.File(path, "w") as h5:
        data = h5.create_group("data")
        for i, actions in enumerate(episodes):
            demo = data.create_group(f"demo_{i}")
            demo.create_dataset("actions", data=actions)
            demo.create_dataset("obs/agentview_rgb", data=np.zeros((len(actions), 4, 4, 3), np.uint8))
    return path
