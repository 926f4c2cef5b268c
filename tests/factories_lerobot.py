"""Factories for the LeRobot reader tests: tiny datasets in the published v3.0 and v2.1 layouts.

Layouts follow ``lerobot.datasets.utils`` (v3.0: ``DEFAULT_DATA_PATH``, ``DEFAULT_VIDEO_PATH``,
``DEFAULT_EPISODES_PATH``, ``DEFAULT_TASKS_PATH``; v2.1: ``LEGACY_*`` paths, ``episodes.jsonl``/``tasks.jsonl``).
Video frames carry their global frame number ``g`` in their brightness (``16 + 10 g``; the bottom quarter is
black so a flip shows), readable back after lossy coding with ``frame_ids``. ``state``/``action`` values encode
(episode, frame) exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
SIZE = 64  # SVT-AV1 needs at least 64 x 64
TASKS = ["pick up the cube", "stack the red block on the blue block"]
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
TOP, WRIST = "observation.images.top", "observation.images.wrist"


# ------------------------------------------------------------------------------------------------- frame coding
def coded_frames(first: int, n: int, inverted: bool = False) -> np.ndarray:
    """Frames ``first .. first + n - 1``: brightness 16 + 10 g (``inverted``: 255 minus that), bottom rows black."""
    levels = 16 + 10 * np.arange(first, first + n)
    if inverted:
        levels = 255 - levels
    frames = np.broadcast_to(levels.astype(np.uint8)[:, None, None, None], (n, SIZE, SIZE, 3)).copy()
    frames[:, 3 * SIZE // 4:] = 0
    return frames


def frame_ids(frames: np.ndarray, inverted: bool = False) -> np.ndarray:
    """Inverse of ``coded_frames`` (asserts the black band is at the bottom: no flip)."""
    top = frames[:, : SIZE // 2].reshape(len(frames), -1).mean(axis=1)
    assert (frames[:, -4:].reshape(len(frames), -1).mean(axis=1) < 12).all(), "frames are flipped"
    level = 255 - top if inverted else top
    return np.rint((level - 16) / 10).astype(int)


def state_of(episode: int, n: int) -> np.ndarray:
    return (episode * 100 + np.arange(n)[:, None] + np.array([0.0, 0.25, 0.5])).astype(np.float32)


def action_of(episode: int, n: int) -> np.ndarray:
    return (-(episode * 100) - np.arange(n)[:, None] * np.array([1.0, 0.5])).astype(np.float32)


def encode_video(path: Path, frames: np.ndarray, codecs: tuple[str, ...] = ("libsvtav1", "libx264", "mpeg4")) -> str:
    """Encode with the first codec PyAV can (AV1 like LeRobot v3 when SVT-AV1 exists); return its name."""
    last: Exception | None = None
    path.parent.mkdir(parents=True, exist_ok=True)
    for codec in codecs:
        try:
            with av.open(str(path), "w") as container:
                stream = container.add_stream(codec, rate=FPS)
                stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
                if codec == "libsvtav1":
                    stream.options = {"crf": "10", "preset": "12"}
                else:
                    stream.bit_rate = 4_000_000
                for frame in frames:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            return codec
        except Exception as exc:  # noqa: BLE001 - codec missing from this FFmpeg build
            last = exc
    raise RuntimeError(f"no usable encoder among {codecs}: {last}")


# ------------------------------------------------------------------------------------------------------ tables
def _features(video_keys: list[str], image_keys: list[str], codec: str) -> dict:
    features = {key: {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"],
                      "info": {"video.height": SIZE, "video.width": SIZE, "video.codec": codec,
                               "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": FPS,
                               "video.channels": 3, "has_audio": False}} for key in video_keys}
    features.update({key: {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]}
                     for key in image_keys})
    features["observation.state"] = {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]}
    features["action"] = {"dtype": "float32", "shape": [2], "names": ["a0", "a1"]}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def _info(version: str, lengths: list[int], features: dict, **extra) -> dict:
    return {"codebase_version": version, "robot_type": "aloha", "total_episodes": len(lengths),
            "total_frames": int(sum(lengths)), "total_tasks": len(TASKS), "chunks_size": 1000, "fps": FPS,
            "splits": {"train": f"0:{len(lengths)}"}, "features": features, **extra}


def _vector_column(values: np.ndarray, fixed: bool) -> pa.Array:
    flat = pa.array(values.reshape(-1), type=pa.float32())
    if fixed:
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    offsets = pa.array(np.arange(0, values.size + 1, values.shape[1]), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, flat)


def _frame_rows(episodes: list[int], lengths: list[int], starts: list[int], fixed: bool,
                image_keys: list[str] = ()) -> pa.Table:
    """The data parquet rows of ``episodes`` (LeRobot's per-frame columns)."""
    cols: dict[str, list] = {"state": [], "action": [], "timestamp": [], "frame_index": [], "episode_index": [],
                             "index": [], "task_index": []}
    for ep in episodes:
        n = lengths[ep]
        cols["state"].append(state_of(ep, n))
        cols["action"].append(action_of(ep, n))
        cols["timestamp"].append(np.arange(n, dtype=np.float32) / FPS)
        cols["frame_index"].append(np.arange(n))
        cols["episode_index"].append(np.full(n, ep))
        cols["index"].append(starts[ep] + np.arange(n))
        cols["task_index"].append(np.full(n, ep % len(TASKS)))
    arrays = {"observation.state": _vector_column(np.concatenate(cols["state"]), fixed),
              "action": _vector_column(np.concatenate(cols["action"]), fixed),
              "timestamp": pa.array(np.concatenate(cols["timestamp"]), type=pa.float32())}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        arrays[name] = pa.array(np.concatenate(cols[name]).astype(np.int64))
    for key in image_keys:
        frames = np.concatenate([coded_frames(starts[ep], lengths[ep], inverted=True) for ep in episodes])
        pngs = [cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in frames]
        arrays[key] = pa.array([{"bytes": b, "path": None} for b in pngs],
                               type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table(arrays)


# --------------------------------------------------------------------------------------------------- datasets
def write_lerobot_v3(root: Path, lengths: tuple[int, ...] = (5, 7, 6, 4),
                     file_groups: tuple[tuple[int, ...], ...] = ((0, 1, 2), (3,)),
                     video_keys: tuple[str, ...] = (TOP, WRIST), row_group_size: int = 4) -> Path:
    """A v3.0 dataset: the episodes of each file group share one data parquet, one mp4 per camera and one
    meta/episodes parquet (file-000, file-001, ... of chunk-000). Camera ``wrist`` holds inverted frames."""
    lengths = list(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
    codec = "?"
    for file_index, group in enumerate(file_groups):
        table = _frame_rows(list(group), lengths, starts, fixed=True)
        path = root / V3_DATA.format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=row_group_size)
        for key in video_keys:
            frames = np.concatenate([coded_frames(starts[ep], lengths[ep], key == WRIST) for ep in group])
            codec = encode_video(root / V3_VIDEO.format(video_key=key, chunk_index=0, file_index=file_index), frames)
        _write_v3_episodes(root, file_index, list(group), lengths, starts, video_keys)
    tasks = pd.DataFrame({"task_index": list(range(len(TASKS)))}, index=pd.Index(TASKS, name="task"))
    tasks.to_parquet(root / "meta/tasks.parquet")
    info = _info("v3.0", lengths, _features(list(video_keys), [], "av1" if codec == "libsvtav1" else codec),
                 data_files_size_in_mb=100, video_files_size_in_mb=500, data_path=V3_DATA, video_path=V3_VIDEO)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (root / "meta/stats.json").write_text(json.dumps({"action": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}))
    return root


def _write_v3_episodes(root: Path, file_index: int, group: list[int], lengths: list[int], starts: list[int],
                       video_keys: tuple[str, ...]) -> None:
    rows, offset = [], 0.0
    for ep in group:
        row = {"episode_index": ep, "tasks": [TASKS[ep % len(TASKS)]], "length": lengths[ep],
               "data/chunk_index": 0, "data/file_index": file_index, "dataset_from_index": starts[ep],
               "dataset_to_index": starts[ep] + lengths[ep], "meta/episodes/chunk_index": 0,
               "meta/episodes/file_index": file_index, "stats/action/mean": [0.0, 0.0]}
        for key in video_keys:
            row.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": file_index,
                        f"videos/{key}/from_timestamp": offset, f"videos/{key}/to_timestamp": offset + lengths[ep] / FPS})
        offset += lengths[ep] / FPS
        rows.append(row)
    path = root / V3_EPISODES.format(chunk_index=0, file_index=file_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_lerobot_v21(root: Path, lengths: tuple[int, ...] = (5, 6, 4)) -> Path:
    """A v2.1 dataset: one parquet and one mp4 per episode; camera ``top`` is a video, ``wrist`` an image
    feature (PNG bytes in the parquet, inverted frames); state/action are variable-length lists."""
    lengths = list(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
    codec = "?"
    for ep, n in enumerate(lengths):
        path = root / V2_DATA.format(episode_chunk=0, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frame_rows([ep], lengths, starts, fixed=False, image_keys=[WRIST]), path)
        codec = encode_video(root / V2_VIDEO.format(episode_chunk=0, video_key=TOP, episode_index=ep),
                             coded_frames(starts[ep], n))
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta/episodes.jsonl", "w") as fh:
        for ep, n in enumerate(lengths):
            fh.write(json.dumps({"episode_index": ep, "tasks": [TASKS[ep % len(TASKS)]], "length": n}) + "\n")
    with open(root / "meta/tasks.jsonl", "w") as fh:
        for i, task in enumerate(TASKS):
            fh.write(json.dumps({"task_index": i, "task": task}) + "\n")
    info = _info("v2.1", lengths, _features([TOP], [WRIST], codec), total_chunks=1, total_videos=len(lengths),
                 data_path=V2_DATA, video_path=V2_VIDEO)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root
