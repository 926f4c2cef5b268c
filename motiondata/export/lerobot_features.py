"""Which store fields become which LeRobot features, and their per-frame values.

Every field of an episode (its episode tables in a recipe store, its per-frame arrays in a windowed store)
maps to one LeRobot feature:

    rgb.<cam>        observation.images.<cam>   video (mp4)
    depth.<cam>      observation.depth.<cam>    float32 [H, W]
    state            observation.state          float32 [D]
    actions          action                     float32 [D]
    ee_pose / joints / gripper   observation.<name>   float32 [D]
    fast.<x>         fast_<x>                   per frame (see below)
    any other <a.b>  observation.<a_b>          per frame (see below)

A representation that is not per frame (FAST chunks, causal VAE latents, keyframes, the episode's text
embedding) is laid out per frame the way motiondata's recipes look it up: the row whose frame is this frame
(``exact``), the last row at or before it (``asof``, causal latents) or the single row (``episode``); a frame
with no row holds zeros. Its companion ``<feature>_row`` (int64) says which row each frame holds (-1: none),
and variable-length rows add ``<feature>_len``. Every value is exported unchanged (dtype and bits).
"""

from __future__ import annotations

import numpy as np

VECTOR_FEATURES = {"state": "observation.state", "actions": "action", "ee_pose": "observation.ee_pose",
                   "joints": "observation.joints", "gripper": "observation.gripper"}
LENGTHS_SUFFIX = "_len"


def feature_name(field: str) -> str:
    if field in VECTOR_FEATURES:
        return VECTOR_FEATURES[field]
    if field.startswith("rgb."):
        return "observation.images." + field[4:]
    if field.startswith("depth."):
        return "observation.depth." + field[6:]
    flat = field.replace(".", "_")
    return flat if field.startswith("fast.") else "observation." + flat


def rows_for_frames(frames: np.ndarray, lookup: str, length: int) -> np.ndarray:
    """(length,) int64: the row answering each frame (-1: none), as recipes look tables up."""
    t = np.arange(length)
    if lookup == "episode":
        return np.zeros(length, np.int64) if len(frames) else np.full(length, -1, np.int64)
    if lookup == "asof":
        return (np.searchsorted(frames, t, side="right") - 1).astype(np.int64)
    rows = np.full(length, -1, np.int64)
    inside = (frames >= 0) & (frames < length)
    rows[frames[inside]] = np.flatnonzero(inside)  # duplicates: the last row of a frame wins
    return rows


def per_frame(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` with zeros where ``rows == -1``."""
    out = np.zeros((len(rows), *values.shape[1:]), dtype=values.dtype)
    have = rows >= 0
    out[have] = values[rows[have]]
    return out


def episode_features(tables: dict, length: int) -> dict[str, np.ndarray]:
    """``{feature: (length, ...) array}`` from ``{field: (values, frames | None, lookup, lengths | None)}``;
    ``frames`` None means a per-frame array. rgb fields keep their own key (``observation.images.<cam>``)."""
    out: dict[str, np.ndarray] = {}
    for field, (values, frames, lookup, lengths) in sorted(tables.items()):
        name = feature_name(field)
        if frames is None or (lookup == "exact" and len(frames) == length
                              and np.array_equal(frames, np.arange(length))):
            out[name] = values
            continue
        rows = rows_for_frames(np.asarray(frames, np.int64), lookup, length)
        out[name] = per_frame(values, rows)
        out[name + "_row"] = rows[:, None]
        if lengths is not None:
            out[name + LENGTHS_SUFFIX] = per_frame(np.asarray(lengths), rows)[:, None]
    return out


def feature_info(name: str, array: np.ndarray, is_video: bool, fps: float) -> dict:
    """The ``info.json`` entry of one feature (shape per frame)."""
    if is_video:
        h, w = array.shape[1:3]
        return {"dtype": "video", "shape": [int(h), int(w), 3], "names": ["height", "width", "channels"]}
    shape = [int(d) for d in array.shape[1:]] or [1]
    names = None if len(shape) != 1 else [f"{name.rsplit('.', 1)[-1]}_{i}" for i in range(shape[0])]
    dtype = "bool" if array.dtype == np.bool_ else str(array.dtype)
    return {"dtype": dtype, "shape": shape, "names": names}


def feature_stats(array: np.ndarray, is_video: bool) -> dict:
    """LeRobot's per-feature stats: min, max, mean, std, count (video: per channel in [0, 1], (3, 1, 1))."""
    if is_video:
        values = array.reshape(-1, 3).astype(np.float64) / 255.0
        stat = lambda f: f(values, axis=0).reshape(3, 1, 1).tolist()  # noqa: E731
        return {"min": stat(np.min), "max": stat(np.max), "mean": stat(np.mean), "std": stat(np.std),
                "count": [int(array.shape[0])]}
    values = array.reshape(len(array), -1).astype(np.float64)
    return {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(), "count": [int(len(array))]}


def merge_stats(acc: dict | None, new: dict) -> dict:
    """Combine two stats dicts (count-weighted mean and pooled variance)."""
    if acc is None:
        return new
    n1, n2 = acc["count"][0], new["count"][0]
    m1, m2 = np.asarray(acc["mean"]), np.asarray(new["mean"])
    v1, v2 = np.asarray(acc["std"]) ** 2, np.asarray(new["std"]) ** 2
    mean = (n1 * m1 + n2 * m2) / (n1 + n2)
    var = (n1 * (v1 + (m1 - mean) ** 2) + n2 * (v2 + (m2 - mean) ** 2)) / (n1 + n2)
    return {"min": np.minimum(acc["min"], new["min"]).tolist(), "max": np.maximum(acc["max"], new["max"]).tolist(),
            "mean": mean.tolist(), "std": np.sqrt(var).tolist(), "count": [n1 + n2]}
