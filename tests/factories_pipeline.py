"""Factories for pipeline tests: tiny LIBERO-layout HDF5 files, video folders with corrupt files, specs."""

from __future__ import annotations

import json
from pathlib import Path

import av
import h5py
import numpy as np
import yaml


def moving_square_frames(t: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    frames = np.repeat(base[None], t, axis=0)
    for i in range(t):
        x = (2 + i) % (w - 6)
        frames[i, 10:16, x:x + 6] = (250, 40, 40)
    return frames


def write_libero_hdf5(path: Path, episodes: int = 3, steps: int = 20, size: int = 32, seed: int = 0,
                      nan_demo: int | None = None, missing_actions_demo: int | None = None,
                      mismatch_demo: int | None = None) -> Path:
    """An HDF5 written in LIBERO's layout (data/demo_i/obs/..., actions, data attrs)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Libero_Tabletop", "env_kwargs": {"control_freq": 20}})
        data.attrs["problem_info"] = json.dumps({"language_instruction": "put the red block in the bowl"})
        for i in range(episodes):
            g = data.create_group(f"demo_{i}")
            n = steps + i
            actions = rng.normal(size=(n, 7)).astype(np.float64) * 0.3
            if nan_demo == i:
                actions[3, 2] = np.nan
            if missing_actions_demo != i:
                g.create_dataset("actions", data=actions[: n - 2] if mismatch_demo == i else actions)
            g.create_dataset("rewards", data=np.zeros(n))
            g.create_dataset("dones", data=np.zeros(n, dtype=np.uint8))
            g.create_dataset("states", data=rng.normal(size=(n, 10)))
            g.create_dataset("robot_states", data=rng.normal(size=(n, 9)))
            g.attrs["num_samples"] = n
            obs = g.create_group("obs")
            obs.create_dataset("agentview_rgb", data=moving_square_frames(n, size, size, seed + i))
            obs.create_dataset("eye_in_hand_rgb", data=moving_square_frames(n, size, size, seed + 100 + i))
            obs.create_dataset("joint_states", data=rng.normal(size=(n, 7)))
            obs.create_dataset("gripper_states", data=rng.normal(size=(n, 2)))
            obs.create_dataset("ee_pos", data=rng.normal(size=(n, 3)))
            obs.create_dataset("ee_ori", data=rng.normal(size=(n, 3)) * 0.1)
            obs.create_dataset("ee_states", data=rng.normal(size=(n, 6)))
    return path


def write_mp4(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_video_folder(root: Path, good: int = 2, corrupt: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(good):
        write_mp4(root / f"clip_{i}.mp4", moving_square_frames(12, 32, 32, seed=10 + i))
        (root / f"clip_{i}.txt").write_text(f"a red square moves right {i}")
    if corrupt:
        (root / "empty.mp4").write_bytes(b"")
        (root / "not_a_video.mp4").write_text("this is a text file, not a video\n" * 20)
        data = (root / "clip_0.mp4").read_bytes()
        (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    return root


def write_spec(path: Path, sources: list[dict], stages: list[dict] | None = None, per_shard: int = 2,
               window: int = 8, stride: int = 4, size: list[int] | None = None) -> Path:
    spec = {"name": "test", "sources": sources, "windows": {"length": window, "stride": stride},
            "shards": {"episodes_per_shard": per_shard}, "stages": stages or []}
    if size:
        spec["frames"] = {"size": size}
    path.write_text(yaml.safe_dump(spec))
    return path
