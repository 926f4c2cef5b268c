"""Factories for the reader tests: inputs written the way each tool writes them (tiny sizes).

- ``write_libero_hdf5``: LIBERO's ``create_dataset.py`` layout (data attrs, demo attrs, obs keys).
- ``write_robomimic_hdf5``: robomimic's layout (robot0_* obs, next_obs, mask/ filter keys).
- ``write_replay_buffer``: Diffusion Policy's ``ReplayBuffer`` (zarr v2: data/<key> chunked, meta/episode_ends).
- ``write_video``: real encoded video files (PyAV), ``frame_id_frames`` makes frames whose index is readable
  back from their brightness after lossy compression.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np

LIBERO_INSTRUCTION = "turn on the stove and put the moka pot on it"


def asymmetric_frames(t: int, h: int = 16, w: int = 20, seed: int = 0) -> np.ndarray:
    """Random uint8 frames (no symmetry, so a flip is detectable)."""
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def frame_id_frames(t: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Flat gray frames with brightness 16 + 6 * i (i < 40): frame i is recognisable after lossy encoding."""
    levels = (16 + 6 * np.arange(t)).clip(0, 255).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (t, h, w, 3)).copy()


def frame_ids(frames: np.ndarray) -> np.ndarray:
    """Inverse of ``frame_id_frames``: the index of every decoded frame."""
    return np.rint((frames.reshape(len(frames), -1).mean(axis=1) - 16) / 6).astype(int)


def random_quats(n: int, seed: int = 0) -> np.ndarray:
    """Unit quaternions xyzw with w >= 0."""
    q = np.random.default_rng(seed).normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, 3:] < 0, -q, q)


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """robosuite.utils.transform_utils.quat2axisangle (xyzw), which LIBERO uses for ee_ori."""
    quat = quat.copy()
    quat[3] = min(max(quat[3], -1.0), 1.0)
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return (quat[:3] * 2.0 * math.acos(quat[3])) / den


def write_libero_hdf5(path: Path, demos: int = 3, steps: int = 6, size: int = 16, seed: int = 0, depth: bool = False,
                      nan_demo: int | None = None, missing_actions_demo: int | None = None,
                      mismatch_demo: int | None = None, problem_info: bool = True) -> Path:
    """LIBERO's layout, as libero/scripts/create_dataset.py writes it."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        grp = f.create_group("data")
        grp.attrs["env_name"] = "Libero_Kitchen_Tabletop_Manipulation"
        if problem_info:
            grp.attrs["problem_info"] = json.dumps({"problem_name": "libero_kitchen_tabletop_manipulation",
                                                    "domain_name": "robosuite",
                                                    "language_instruction": LIBERO_INSTRUCTION})
        grp.attrs["macros_image_convention"] = "opengl"
        grp.attrs["num_demos"] = demos
        grp.attrs["bddl_file_name"] = "libero/bddl_files/libero_10/KITCHEN_SCENE3_turn_on_the_stove.bddl"
        grp.attrs["bddl_file_content"] = "(define (problem LIBERO_Kitchen_Tabletop_Manipulation))"
        grp.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Kitchen_Tabletop_Manipulation",
                                            "problem_name": "libero_kitchen_tabletop_manipulation",
                                            "bddl_file": "KITCHEN_SCENE3_turn_on_the_stove.bddl",
                                            "env_kwargs": {"robots": ["Panda"], "controller_configs": {},
                                                           "control_freq": 20, "camera_heights": size,
                                                           "camera_widths": size, "camera_depths": depth}})
        total = 0
        for i in range(demos):
            n = steps + i
            total += n
            ep = grp.create_group(f"demo_{i}")
            obs = ep.create_group("obs")
            quats = random_quats(n, seed + i)
            ee_pos = rng.normal(size=(n, 3))
            ee_ori = np.stack([quat2axisangle(q) for q in quats])
            obs.create_dataset("gripper_states", data=rng.normal(size=(n, 2)))
            obs.create_dataset("joint_states", data=rng.normal(size=(n, 7)))
            obs.create_dataset("ee_states", data=np.hstack([ee_pos, ee_ori]))
            obs.create_dataset("ee_pos", data=ee_pos)
            obs.create_dataset("ee_ori", data=ee_ori)
            obs.create_dataset("agentview_rgb", data=asymmetric_frames(n, size, size, seed + i))
            obs.create_dataset("eye_in_hand_rgb", data=asymmetric_frames(n, size, size, seed + 50 + i))
            if depth:
                obs.create_dataset("agentview_depth", data=rng.uniform(0.2, 2.0, size=(n, size, size, 1)).astype(np.float32))
            actions = rng.uniform(-1, 1, size=(n, 7))
            if nan_demo == i:
                actions[2, 3] = np.nan
            if mismatch_demo == i:
                actions = actions[:-2]
            if missing_actions_demo != i:
                ep.create_dataset("actions", data=actions)
            ep.create_dataset("states", data=rng.normal(size=(n, 45)))
            ep.create_dataset("robot_states", data=rng.normal(size=(n, 9)))
            ep.create_dataset("rewards", data=np.r_[np.zeros(n - 1), 1].astype(np.uint8))
            ep.create_dataset("dones", data=np.r_[np.zeros(n - 1), 1].astype(np.uint8))
            ep.attrs["num_samples"] = n
            ep.attrs["model_file"] = "<mujoco/>"
            ep.attrs["init_state"] = rng.normal(size=45)
        grp.attrs["total"] = total
    return path


def write_robomimic_hdf5(path: Path, demos: int = 3, steps: int = 5, size: int = 12, seed: int = 1) -> Path:
    """robomimic's layout (image.hdf5 of the v0.1 datasets), with mask/ filter keys."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1,
                                             "env_kwargs": {"control_freq": 20, "camera_names": ["agentview"]}})
        total = 0
        for i in range(demos):
            n = steps + i
            total += n
            ep = data.create_group(f"demo_{i}")
            ep.attrs["num_samples"] = n
            ep.create_dataset("actions", data=rng.uniform(-1, 1, size=(n, 7)))
            ep.create_dataset("rewards", data=np.zeros(n))
            ep.create_dataset("dones", data=np.zeros(n, dtype=np.int64))
            ep.create_dataset("states", data=rng.normal(size=(n, 32)))
            for group_name in ("obs", "next_obs"):
                obs = ep.create_group(group_name)
                obs.create_dataset("agentview_image", data=asymmetric_frames(n, size, size, seed + i))
                obs.create_dataset("robot0_eye_in_hand_image", data=asymmetric_frames(n, size, size, seed + 9 + i))
                obs.create_dataset("robot0_eef_pos", data=rng.normal(size=(n, 3)))
                obs.create_dataset("robot0_eef_quat", data=random_quats(n, seed + i))
                obs.create_dataset("robot0_gripper_qpos", data=rng.normal(size=(n, 2)))
                obs.create_dataset("robot0_joint_pos", data=rng.normal(size=(n, 7)))
                obs.create_dataset("robot0_joint_pos_cos", data=rng.normal(size=(n, 7)))
                obs.create_dataset("object", data=rng.normal(size=(n, 10)))
        data.attrs["total"] = total
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_0", b"demo_2"][: max(demos - 1, 1)], dtype="S8"))
        mask.create_dataset("valid", data=np.array([b"demo_1"], dtype="S8"))
    return path


def write_replay_buffer(path: Path, lengths: tuple[int, ...] = (5, 7, 8), size: int = 8, seed: int = 0,
                        image_dtype: str = "uint8", extra: dict | None = None, zip_store: bool = False) -> Path:
    """A Diffusion Policy ReplayBuffer: zarr v2, data/{img,state,action,...} chunked, meta/episode_ends."""
    import numcodecs
    import zarr

    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    img = rng.integers(0, 256, size=(n, size, size, 3)).astype(image_dtype)
    arrays = {"img": img, "state": rng.normal(size=(n, 5)).astype(np.float32),
              "action": rng.uniform(0, 512, size=(n, 2)).astype(np.float32), **(extra or {})}
    store = zarr.storage.ZipStore(str(path), mode="w") if zip_store else str(path)
    root = zarr.open_group(store, mode="w", zarr_format=2)
    data, meta = root.require_group("data"), root.require_group("meta")
    blosc = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    for key, value in arrays.items():
        chunks = (4,) + value.shape[1:] if value.ndim == 4 else (100,) + value.shape[1:]
        arr = data.create_array(key, shape=value.shape, chunks=chunks, dtype=value.dtype, compressors=blosc)
        arr[:] = value
    ends = meta.create_array("episode_ends", shape=(len(lengths),), chunks=(len(lengths),), dtype="int64",
                             compressors=None)
    ends[:] = np.cumsum(lengths)
    if zip_store:
        store.close()
    return path


def write_video(path: Path, frames: np.ndarray, fps: float = 10, codec: str = "libx264",
                container_options: dict | None = None, bit_rate: int | None = 4_000_000, first_pts: int = 0) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 with PyAV (yuv420p). The high default bit rate keeps frame ids
    readable through lossy codecs (mpeg4's default quality is poor); SVT-AV1 needs ``bit_rate=None``."""
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if bit_rate:
            stream.bit_rate = bit_rate
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if first_pts:  # a stream that starts later than 0 s (start_time != 0)
                video_frame.pts, video_frame.time_base = first_pts + i, Fraction(1, int(fps))
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def truncate_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return dst


def write_video_cv2(path: Path, frames: np.ndarray, fps: float = 10, fourcc: str = "mp4v") -> Path:
    """Encode ``frames`` (RGB) with OpenCV's VideoWriter (``mp4v`` -> .mp4, ``MJPG`` -> .avi)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (frames.shape[2], frames.shape[1]))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
