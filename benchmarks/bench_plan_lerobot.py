"""Planning rows of ``bench_scale`` over a real LeRobot v3.0 episode index (issue 11 item 5).

``write_index`` writes ``meta/info.json`` and ``meta/episodes/chunk-XXX/file-YYY.parquet`` of ``count``
episodes (the columns LeRobot v3.0 writes: episode_index, tasks, length, data/chunk_index, data/file_index,
dataset_from_index, dataset_to_index, per camera videos/<key>/{chunk_index, file_index, from_timestamp,
to_timestamp}, meta/episodes/{chunk_index, file_index} and a per-episode stats column the reader skips); no
data or video files (planning opens none). ``plan_row`` plans it with ``plan_shards`` and the real
``LeRobotSource`` (``open_spec_source``) in a fresh spawned process, so each row's peak RSS growth
(``VmHWM`` after the imports vs after planning) is its own.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CAMERAS = ("observation.images.top", "observation.images.wrist")
FPS = 30
PER_META_FILE = 20_000  # episodes per meta/episodes parquet (LeRobot caps these files by size)
PER_DATA_FILE = 200  # episodes per data parquet
PER_VIDEO_FILE = 100  # episodes per mp4
TASKS = [f"task {i}: pick up the object and place it in bin {i % 7}" for i in range(50)]


def _info(count: int, frames: int) -> dict:
    video = {"dtype": "video", "shape": [480, 640, 3], "names": ["height", "width", "channels"],
             "info": {"video.codec": "av1", "video.fps": FPS}}
    features = {key: video for key in CAMERAS}
    features["observation.state"] = {"dtype": "float32", "shape": [7], "names": None}
    features["action"] = {"dtype": "float32", "shape": [7], "names": None}
    for name in ("timestamp",):
        features[name] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    return {"codebase_version": "v3.0", "robot_type": "bench", "total_episodes": count, "total_frames": frames,
            "total_tasks": len(TASKS), "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{count}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}


def _columns(episodes: np.ndarray, lengths: np.ndarray, starts: np.ndarray, meta_file: int) -> dict:
    import pyarrow as pa

    data_file = episodes // PER_DATA_FILE
    video_file = episodes // PER_VIDEO_FILE
    seconds = lengths / FPS
    first = video_file * PER_VIDEO_FILE  # offset of each episode inside its video: the episodes before it there
    cum = np.concatenate([[0.0], np.cumsum(seconds)])
    offset = cum[episodes - episodes[0]] - cum[np.maximum(first, episodes[0]) - episodes[0]]
    task = pa.array([[TASKS[int(i) % len(TASKS)]] for i in episodes], type=pa.list_(pa.string()))
    cols = {"episode_index": episodes, "tasks": task, "length": lengths,
            "data/chunk_index": data_file // 1000, "data/file_index": data_file % 1000,
            "dataset_from_index": starts, "dataset_to_index": starts + lengths}
    for key in CAMERAS:
        cols.update({f"videos/{key}/chunk_index": video_file // 1000, f"videos/{key}/file_index": video_file % 1000,
                     f"videos/{key}/from_timestamp": offset, f"videos/{key}/to_timestamp": offset + seconds})
    cols["meta/episodes/chunk_index"] = np.zeros(len(episodes), np.int64)
    cols["meta/episodes/file_index"] = np.full(len(episodes), meta_file, np.int64)
    means = np.repeat((lengths % 7 / 7.0)[:, None], 7, axis=1).reshape(-1)
    cols["stats/action/mean"] = pa.FixedSizeListArray.from_arrays(pa.array(means), 7)
    return cols


def write_index(root: Path, count: int) -> Path:
    """A LeRobot v3.0 dataset root whose meta/episodes lists ``count`` episodes (seeded lengths 200..600)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = np.random.default_rng(0).integers(200, 600, size=count).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    for meta_file, lo in enumerate(range(0, count, PER_META_FILE)):
        episodes = np.arange(lo, min(lo + PER_META_FILE, count), dtype=np.int64)
        cols = _columns(episodes, lengths[episodes], starts[episodes], meta_file)
        path = root / f"meta/episodes/chunk-000/file-{meta_file:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
    (root / "meta/info.json").write_text(json.dumps(_info(count, int(lengths.sum())), indent=2))
    return root


class _UnitsOnly:
    """The source as the planner saw it before ``unit_listing``: its ``units()`` list."""

    def __init__(self, source):
        self.source = source

    def units(self):
        units = self.source.units()
        self.listing_problems = self.source.listing_problems
        return units


def peak_mib() -> float:
    """This process's peak RSS: ``VmHWM`` (its own address space; a spawned child's ``ru_maxrss`` may start at
    its parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plan(root: str, compact: bool) -> dict:
    import pyarrow.parquet  # noqa: F401 - imported before the baseline: its RSS is not planning's

    from motiondata.pipeline import plan
    from motiondata.pipeline.spec import parse_spec

    spec = parse_spec({"name": "scale", "sources": [{"kind": "lerobot", "path": root, "name": "lr"}],
                       "shards": {"episodes_per_shard": 4}})
    original = plan.open_spec_source
    if not compact:
        plan.open_spec_source = lambda spec, index: _UnitsOnly(original(spec, index))
    before = peak_mib()
    start = time.perf_counter()
    plans, errors = plan.plan_shards(spec)
    seconds = time.perf_counter() - start
    grown = peak_mib() - before
    first = plans[0].units[0]["unit"]
    assert first["id"] == "episode_000000" and not errors, (first, errors[:3])
    return {"shards": len(plans), "seconds": seconds, "rss_mib": grown, "errors": len(errors)}


def plan_row(root: Path, count: int, compact: bool = True) -> dict:
    """Plan the index at ``root`` in a fresh spawned process: ``unit_listing`` (``compact``) or ``units()``."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        row = pool.apply(_plan, (str(root), compact))
    return {"units": count, "compact": compact, "what": "LeRobot v3.0 episodes (meta/episodes parquet)", **row}


def lerobot_rows(count: int) -> list[dict]:
    """Write a ``count``-episode index once (temp dir) and plan it through ``unit_listing``, then ``units()``."""
    root = Path(tempfile.mkdtemp(prefix="bench_lerobot_index_"))
    try:
        start = time.perf_counter()
        write_index(root, count)
        log.info("wrote a %d-episode LeRobot index in %.1f s", count, time.perf_counter() - start)
        return [plan_row(root, count), plan_row(root, count, compact=False)]
    finally:
        shutil.rmtree(root)
