"""Export a motiondata store as a LeRobot v3.0 dataset (``motiondata export lerobot STORE OUT_DIR``).

Written layout (LeRobot's published v3.0 layout, all episodes of a file back to back)::

    meta/info.json                                   codebase_version "v3.0", fps, features, path templates
    meta/tasks.parquet                               task string (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, tasks, data and video spans
    meta/stats.json                                  min / max / mean / std / count per feature
    data/chunk-000/file-000.parquet                  one row per frame: features + timestamp, frame_index,
                                                     episode_index, index, task_index
    videos/<key>/chunk-000/file-000.mp4              one per camera, encoded with PyAV (H.264 by default)

Frames and vectors come from the store's ``episodes.zarr`` (episode tables or per-frame arrays); fields map
to features as :mod:`motiondata.export.lerobot_features` says, values unchanged. Every episode must have the
same features and shapes and one fps (LeRobot's requirement): otherwise the export is refused naming the
episodes, and ``sources=`` picks the ones to export. The dataset is written into a hidden temporary folder
and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.errors import StoreError
from motiondata.export.lerobot_features import (episode_features, feature_info, feature_stats, merge_stats)
from motiondata.export.lerobot_video import VideoWriter
from motiondata.usage import UsageError

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
STANDARD = {"timestamp": ("float32", [1]), "frame_index": ("int64", [1]), "episode_index": ("int64", [1]),
            "index": ("int64", [1]), "task_index": ("int64", [1])}


def padded_widths(store: Path, ids: list[str]) -> dict[str, tuple[int, ...]]:
    """Variable-length tables (FAST tokens) are zero-padded per episode; the widest row shape over ``ids``."""
    from motiondata.store.episodes_zarr import episode_attrs

    widths: dict[str, tuple[int, ...]] = {}
    for episode_id in ids:
        attrs = episode_attrs(store, episode_id)
        shapes = (attrs.get("motiondata") or {}).get("fields", {})
        for name, info in (attrs.get("tables") or {}).items():
            if info.get("has_lengths") and name in shapes:
                shape = tuple(int(d) for d in shapes[name]["shape"][1:])
                widths[name] = tuple(np.maximum(widths.get(name, shape), shape))
    return widths


def _pad(values: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    if shape is None or tuple(values.shape[1:]) == shape:
        return values
    out = np.zeros((len(values), *shape), values.dtype)
    out[(slice(None), *(slice(0, d) for d in values.shape[1:]))] = values
    return out


def load_store_episode(store: Path, episode_id: str, widths: dict[str, tuple[int, ...]] | None = None
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-frame features of one stored episode and its attributes (variable-length rows padded to
    ``widths``)."""
    from motiondata.pipeline.table_build import load_tables
    from motiondata.store.episodes_zarr import episode_attrs, read_episode

    attrs = episode_attrs(store, episode_id)
    if isinstance(attrs.get("tables"), dict):
        tables, _ = load_tables(store, episode_id)
        length = int(attrs.get("length") or len(tables[next(iter(tables))].values))
        widths = widths or {}
        raw = {name: (_pad(t.values, widths.get(name)), t.frames, t.lookup, t.lengths) for name, t in tables.items()}
    else:  # a windowed store: the per-frame arrays (window fields are not per frame)
        arrays = {k: v for k, v in read_episode(store, episode_id).items() if not k.startswith("windows.")}
        length = max((len(v) for k, v in arrays.items() if k.startswith("rgb.")), default=0)
        raw = {k: (v, None, "exact", None) for k, v in arrays.items() if v.ndim and len(v) == length}
    return episode_features(raw, length), {**attrs, "length": length}


class LeRobotExport:
    """Writes one LeRobot v3.0 dataset; :func:`export_lerobot` drives it."""

    def __init__(self, tmp: Path, fps: float, codec: str, crf: int):
        self.tmp, self.fps, self.codec, self.crf = tmp, fps, codec, crf
        self.features: dict[str, dict] | None = None
        self.videos: dict[str, VideoWriter] = {}
        self.stats: dict[str, dict] = {}
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict] = []
        self.frames_total = 0
        self.writer = None

    def add(self, index: int, episode_id: str, features: dict[str, np.ndarray], attrs: dict) -> None:
        length = int(attrs["length"])
        self._check_features(episode_id, features)
        task = str(attrs.get("language") or "")
        task_index = self.tasks.setdefault(task, len(self.tasks))
        row: dict[str, Any] = {"episode_index": index, "tasks": [task], "length": length,
                               "data/chunk_index": 0, "data/file_index": 0,
                               "dataset_from_index": self.frames_total, "dataset_to_index": self.frames_total + length,
                               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                               "motiondata/episode_id": episode_id}
        for key, info in self.features.items():
            if info["dtype"] == "video":
                span = self._video(key, info).append(features[key])
                row.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                            f"videos/{key}/from_timestamp": span[0], f"videos/{key}/to_timestamp": span[1]})
            self.stats[key] = merge_stats(self.stats.get(key), feature_stats(features[key], info["dtype"] == "video"))
        self._write_rows(index, features, length, task_index)
        self.episode_rows.append(row)
        self.frames_total += length

    def _check_features(self, episode_id: str, features: dict[str, np.ndarray]) -> None:
        infos = {k: feature_info(k, v, k.startswith("observation.images."), self.fps) for k, v in features.items()}
        if self.features is None:
            self.features = infos
            return
        if infos != self.features:
            differ = sorted(set(infos) ^ set(self.features)) or sorted(
                k for k in infos if infos[k] != self.features[k])
            raise StoreError(f"episode {episode_id!r} has other features than the first episode ({differ[:4]}); a "
                             "LeRobot dataset has one feature set: export one source at a time with --source NAME")

    def _video(self, key: str, info: dict) -> VideoWriter:
        if key not in self.videos:
            path = self.tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            self.videos[key] = VideoWriter(path, self.fps, info["shape"][1], info["shape"][0], self.codec, self.crf)
        return self.videos[key]

    def _write_rows(self, index: int, features: dict[str, np.ndarray], length: int, task_index: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        frame = np.arange(length, dtype=np.int64)
        columns = {key: _column(value) for key, value in features.items() if self.features[key]["dtype"] != "video"}
        columns.update({"timestamp": pa.array((frame / self.fps).astype(np.float32)), "frame_index": pa.array(frame),
                        "episode_index": pa.array(np.full(length, index, np.int64)),
                        "index": pa.array(self.frames_total + frame),
                        "task_index": pa.array(np.full(length, task_index, np.int64))})
        table = pa.table(columns)
        if self.writer is None:
            path = self.tmp / DATA_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(str(path), table.schema)
        self.writer.write_table(table, row_group_size=max(length, 1))

    def finish(self, repo_id: str) -> dict:
        import pandas as pd

        if self.writer is not None:
            self.writer.close()
        for writer in self.videos.values():
            writer.close()
        meta = self.tmp / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.episode_rows).to_parquet(self.tmp / EPISODES_PATH, index=False)
        tasks = pd.DataFrame({"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task"))
        tasks.to_parquet(meta / "tasks.parquet")
        info = self.info(repo_id)
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        (meta / "stats.json").write_text(json.dumps(self.stats, indent=4))
        return info

    def info(self, repo_id: str) -> dict:
        features = {}
        for key, entry in self.features.items():
            if entry["dtype"] == "video":
                entry = {**entry, "info": self.videos[key].info()}
            features[key] = entry
        features.update({k: {"dtype": d, "shape": s, "names": None} for k, (d, s) in STANDARD.items()})
        return {"codebase_version": CODEBASE_VERSION, "robot_type": None, "total_episodes": len(self.episode_rows),
                "total_frames": self.frames_total, "total_tasks": len(self.tasks), "chunks_size": 1000,
                "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": _fps_value(self.fps),
                "splits": {"train": f"0:{len(self.episode_rows)}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.videos else None, "features": features,
                "motiondata": {"repo_id": repo_id}}


def _fps_value(fps: float) -> float | int:
    return int(fps) if float(fps).is_integer() else float(fps)


def _column(values: np.ndarray):
    """A parquet column: scalars per frame as plain values, vectors as fixed-size lists, N-D as nested lists."""
    import pyarrow as pa

    if values.ndim == 2 and values.shape[1] >= 1:
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    if values.ndim == 1:
        return pa.array(values)
    return pa.array([v.tolist() for v in values])


def _episode_ids(store: Path, sources: list[str] | None) -> list[str]:
    from motiondata.store.episodes_zarr import episode_attrs, list_episodes

    ids = list_episodes(store)
    if sources:
        ids = [e for e in ids if episode_attrs(store, e).get("source") in sources]
    if not ids:
        raise StoreError(f"{store} holds no episode{' of sources ' + str(sources) if sources else ''} in "
                         "episodes.zarr; build it first (or check --source)")
    return ids


def export_lerobot(store: str | Path, out_dir: str | Path, repo_id: str | None = None,
                   sources: list[str] | None = None, codec: str = "libx264", crf: int = 10) -> dict:
    """Write ``out_dir`` as a LeRobot v3.0 dataset from ``store``; returns a summary."""
    store, out_dir = Path(store), Path(out_dir)
    if not (store / "manifest.json").is_file() and not (store / "episodes.zarr").is_dir():
        raise UsageError(f"{store} is not a motiondata store (no manifest.json); pass the --out folder of a build")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{out_dir} exists and is not an empty folder; pass a new OUT_DIR")
    ids = _episode_ids(store, sources)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        export, widths = None, padded_widths(store, ids)
        for index, episode_id in enumerate(ids):
            features, attrs = load_store_episode(store, episode_id, widths)
            fps = float(attrs.get("fps") or 0)
            if export is None:
                if fps <= 0:
                    raise StoreError(f"episode {episode_id!r} records no fps; rebuild the store with this version")
                export = LeRobotExport(tmp, fps, codec, crf)
            elif abs(fps - export.fps) > 1e-6 * export.fps:
                raise StoreError(f"episode {episode_id!r} runs at {fps:g} fps, the first at {export.fps:g}; a LeRobot "
                                 "dataset has one fps: export one source at a time with --source NAME")
            export.add(index, episode_id, features, attrs)
        info = export.finish(repo_id or f"local/{out_dir.name}")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %d episodes, %d frames to %s", info["total_episodes"], info["total_frames"], out_dir)
    return {"out": str(out_dir), "episodes": info["total_episodes"], "frames": info["total_frames"],
            "features": sorted(info["features"]), "fps": info["fps"]}
