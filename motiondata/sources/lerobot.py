"""LeRobot datasets, codebase v3.0 and v2.0/v2.1, read one episode at a time without the lerobot package.

v3.0 (the layout ``lerobot.datasets.utils`` writes)::

    meta/info.json                                  codebase_version, fps, features, data_path, video_path
    meta/tasks.parquet                              task strings (the index, or a "task" column) -> task_index
    meta/episodes/chunk-XXX/file-YYY.parquet        one row per episode: episode_index, length, tasks,
                                                    dataset_from_index, dataset_to_index, data/chunk_index,
                                                    data/file_index, videos/<key>/{chunk_index, file_index,
                                                    from_timestamp, to_timestamp}, stats/... (ignored)
    data/chunk-XXX/file-YYY.parquet                 the frames of many episodes (episode_index, frame_index,
                                                    timestamp, index, task_index, features)
    videos/<key>/chunk-XXX/file-YYY.mp4             many episodes back to back (AV1 by default)

v2.x: ``meta/episodes.jsonl``, ``meta/tasks.jsonl``, one ``data/chunk-XXX/episode_XXXXXX.parquet`` and one
``videos/chunk-XXX/<key>/episode_XXXXXX.mp4`` per episode (chunk = episode_index // chunks_size).

A frame's image is the video frame at ``from_timestamp + timestamp`` (LeRobot's own rule), found within
``tolerance_s``. Only the row groups holding the episode are read from a shared parquet file. Nothing stays
open between calls, so a source object is safe in forked workers.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Sequence

import numpy as np

from motiondata.episode import Episode, safe_id
from motiondata.errors import SourceError, SpecError
from motiondata.sources.base import (DEFAULT_MAX_ABS, build_episode, check_choice, check_max_abs, check_positive,
                                     error_unit, listing_problem, raise_if_error_unit, require_path, source_errors)
from motiondata.sources.lerobot_columns import checked_timestamps, decode_images, episode_row_groups, vector_column
from motiondata.sources.lerobot_listing import EpisodeIndex, EpisodeListing, distinct_rows, read_v2_index, read_v3_index
from motiondata.sources.video_decode import BACKENDS, read_frames_at_timestamps

log = logging.getLogger(__name__)

V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
CAMERA_PREFIXES = ("observation.images.", "observation.image.", "observation.")
VECTOR_OPTIONS = ("state", "actions", "ee_pose", "joints", "gripper")


def camera_name(key: str) -> str:
    """``observation.images.top`` -> ``top`` (the name used in ``rgb.<cam>``)."""
    for prefix in CAMERA_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return safe_id(key[len(prefix):])
    return safe_id(key)


class LeRobotSource:
    """Episodes of a local LeRobot dataset (v3.0, v2.1 or v2.0).

    Args:
        path: the dataset root (the folder holding ``meta/info.json``).
        cameras: feature keys (``observation.images.top``) or short names (``top``) to read; None: every
            ``video`` and ``image`` feature. The camera name is the key without ``observation.images.``.
        state_key, action_key: the proprio and action features; None skips the field.
        ee_pose_key, joints_key, gripper_key: optional features for those Episode fields.
        tolerance_s: how far the nearest video frame may be from a frame's timestamp (LeRobot uses 1e-4).
        backend: video decoder, see ``motiondata.sources.video_decode``.
        episodes: episode indices to read (default all).
        language: override the instruction (default: the episode's task strings).
        max_abs: an episode whose vector features hold ``|x| > max_abs`` is an error record (None: only values
            beyond float32). Text columns are always a record, never parsed.

    ``units()`` lists every ``episode_index`` once; duplicated ``meta/episodes`` rows are left out and
    reported in ``self.listing_problems`` (see ``motiondata.sources.base``). ``unit_listing()`` gives the same
    units as a compact sequence (the index column-wise, each unit made on access) for the planner.
    """

    kind = "lerobot"

    def __init__(self, path: str, cameras: list[str] | None = None, state_key: str | None = "observation.state",
                 action_key: str | None = "action", ee_pose_key: str | None = None, joints_key: str | None = None,
                 gripper_key: str | None = None, tolerance_s: float = 1e-3, backend: str = "auto",
                 episodes: list[int] | None = None, language: str | None = None,
                 max_abs: float | None = DEFAULT_MAX_ABS):
        self.path = require_path(path, self.kind)
        self.max_abs = check_max_abs(max_abs)
        self.listing_problems: list[dict] = []
        if cameras is not None and (isinstance(cameras, str) or not all(isinstance(c, str) for c in cameras)):
            raise SpecError(f"option cameras={cameras!r} must be a list of feature keys or camera names")
        if episodes is not None and not all(isinstance(e, int) and not isinstance(e, bool) for e in episodes):
            raise SpecError(f"option episodes={episodes!r} must be a list of episode indices")
        check_positive("tolerance_s", tolerance_s, allow_none=False)
        check_choice("backend", backend, BACKENDS)
        keys = (state_key, action_key, ee_pose_key, joints_key, gripper_key)
        if not all(k is None or isinstance(k, str) for k in keys):
            raise SpecError(f"feature key options must be strings or null, got {keys}")
        self.vector_keys = {f: k for f, k in zip(VECTOR_OPTIONS, keys) if k is not None}
        self.cameras, self.tolerance_s, self.backend = cameras, float(tolerance_s), backend
        self.episodes = None if episodes is None else set(episodes)
        self.language = language
        self._info_cache: dict | None = None

    # ------------------------------------------------------------------------------------------- metadata
    def _file(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    def _info(self) -> dict:
        if self._info_cache is None:
            self._info_cache = self._load_info()
        return self._info_cache

    def _load_info(self) -> dict:
        file = self._file("meta/info.json")
        if not os.path.isfile(file):
            raise SourceError(file, "meta/info.json is missing; not a LeRobot dataset root (v2.0+)")
        try:
            with open(file, encoding="utf-8") as fh:
                info = json.load(fh)
        except (OSError, ValueError) as exc:
            raise SourceError(file, f"cannot parse info.json ({type(exc).__name__}: {exc})") from exc
        version = str(info.get("codebase_version", ""))
        if version != "v3.0" and not version.startswith("v2."):
            raise SourceError(file, f"codebase_version {version!r} is not supported (v2.0, v2.1, v3.0); convert "
                                    "it with lerobot's dataset conversion scripts")
        for key in ("fps", "features"):
            if key not in info:
                raise SourceError(file, f"info.json has no {key!r}")
        fps = info["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise SourceError(file, f"info.json fps={fps!r} ({type(fps).__name__}) is not a positive number of "
                                    "frames per second; set it to the recording rate, e.g. \"fps\": 30")
        return info

    @property
    def is_v3(self) -> bool:
        return self._info()["codebase_version"] == "v3.0"

    def camera_keys(self) -> dict[str, str]:
        """Selected camera feature key -> camera name."""
        features = self._info()["features"]
        available = [k for k, ft in features.items() if ft.get("dtype") in ("video", "image")]
        by_name = {camera_name(k): k for k in available}
        if self.cameras is None:
            keys = available
        else:
            unknown = [c for c in self.cameras if c not in available and c not in by_name]
            if unknown:
                raise SourceError(self._file("meta/info.json"), f"cameras {unknown} are not image/video features "
                                  f"(available: {available})")
            keys = [c if c in available else by_name[c] for c in self.cameras]
        if not keys:
            raise SourceError(self._file("meta/info.json"), "the dataset has no image or video feature to read")
        names = [camera_name(k) for k in keys]
        return dict(zip(keys, names if len(set(names)) == len(names) else [safe_id(k) for k in keys]))

    def _episode_index(self) -> EpisodeIndex:
        return self._v3_index() if self.is_v3 else self._v2_index()

    def _v3_index(self) -> EpisodeIndex:
        folder = self._file("meta/episodes")
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".parquet"))
        if not files:
            raise SourceError(folder, "no meta/episodes/chunk-XXX/file-YYY.parquet; the v3.0 dataset is incomplete")
        wanted = {"episode_index", "length", "tasks", "dataset_from_index", "dataset_to_index",
                  "data/chunk_index", "data/file_index"}
        for key in self.camera_keys():
            wanted |= {f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")}
        return read_v3_index(files, wanted)

    def _v2_index(self) -> EpisodeIndex:
        file = self._file("meta/episodes.jsonl")
        if not os.path.isfile(file):
            raise SourceError(file, "meta/episodes.jsonl is missing; the v2.x dataset is incomplete")
        return read_v2_index(file)

    # ---------------------------------------------------------------------------------------------- units
    def units(self) -> list[dict]:
        """One unit per distinct ``episode_index``; duplicated rows go to ``self.listing_problems``."""
        return list(self.unit_listing())

    def unit_listing(self) -> Sequence[dict]:
        """``units()`` as a compact sequence: the index is held column-wise (no Python object per episode) and
        each unit dict is made on access. The rows whose ``episode_index`` is not an integer come first (error
        units, in row order), then one unit per distinct index, ascending (the first row; later ones go to
        ``self.listing_problems``, set by this call)."""
        self.listing_problems = []
        name = os.path.basename(os.path.normpath(self.path))
        try:
            index, cameras = self._episode_index(), self.camera_keys()
        except SourceError as exc:
            return [error_unit(name, exc.file, exc.reason)]
        bad, order = distinct_rows(index, self.episodes, self._duplicate)
        return EpisodeListing(index, bad, order, self._bad_row, functools.partial(self._unit, cameras=cameras))

    @staticmethod
    def _bad_row(number: int, row: dict) -> dict:
        index = row.get("episode_index")
        return error_unit(f"episode_row_{number}", row["_meta_file"], f"episode row {number} has "
                          f"episode_index={index!r}, not an integer; fix meta/episodes")

    def _duplicate(self, row: dict, index: int, first: dict) -> None:
        same = {k: v for k, v in row.items() if k != "_meta_file"} == {k: v for k, v in first.items()
                                                                         if k != "_meta_file"}
        reason = (f"meta/episodes lists episode_index {index} more than once ({'identical' if same else 'differing'}"
                  f" rows; the first, in {os.path.relpath(first['_meta_file'], self.path)}, is used, this one "
                  "is ignored); remove the duplicate row")
        log.warning("%s: %s", row["_meta_file"], reason)
        self.listing_problems.append(listing_problem(row["_meta_file"], f"episode_{index:06d}", reason))

    def _unit(self, row: dict, cameras: dict[str, str]) -> dict:
        meta_file, index = row["_meta_file"], int(row["episode_index"])
        uid = f"episode_{index:06d}"
        try:
            unit = self._v3_unit(row, cameras) if self.is_v3 else self._v2_unit(row, cameras)
        except SourceError as exc:
            return error_unit(uid, exc.file, exc.reason, episode_index=index)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            return error_unit(uid, meta_file, f"bad metadata for episode {index}: {type(exc).__name__}: {exc}",
                              episode_index=index)
        tasks = row.get("tasks") or []
        return {"id": uid, "file": self._file(unit.pop("data_file")), "episode_index": index,
                "tasks": [str(t) for t in (tasks if isinstance(tasks, list) else [tasks])], **unit}

    def _v3_unit(self, row: dict, cameras: dict[str, str]) -> dict:
        info, meta_file = self._info(), row["_meta_file"]
        start, stop = row.get("dataset_from_index"), row.get("dataset_to_index")
        length = row.get("length")
        if length is None and start is not None and stop is not None:
            length = int(stop) - int(start)
        if start is not None and stop is not None and int(stop) - int(start) != int(length):
            raise SourceError(meta_file, f"episode {row['episode_index']}: length {length} disagrees with "
                                         f"dataset_to_index - dataset_from_index = {int(stop) - int(start)}")
        template = info.get("data_path") or V3_DATA
        data_file = template.format(chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"]))
        videos = {}
        for key, ft in self._info()["features"].items():
            if key in cameras and ft.get("dtype") == "video":
                prefix = f"videos/{key}/"
                rel = (info.get("video_path") or V3_VIDEO).format(
                    video_key=key, chunk_index=int(row[prefix + "chunk_index"]),
                    file_index=int(row[prefix + "file_index"]))
                videos[key] = {"file": rel, "from_timestamp": float(row[prefix + "from_timestamp"]),
                               "to_timestamp": float(row[prefix + "to_timestamp"])}
        return {"data_file": data_file, "length": int(length), "videos": videos}

    def _v2_unit(self, row: dict, cameras: dict[str, str]) -> dict:
        info, index = self._info(), int(row["episode_index"])
        chunk = index // int(info.get("chunks_size") or 1000)
        data_file = (info.get("data_path") or V2_DATA).format(episode_chunk=chunk, episode_index=index)
        videos = {}
        for key, ft in info["features"].items():
            if key in cameras and ft.get("dtype") == "video":
                rel = (info.get("video_path") or V2_VIDEO).format(episode_chunk=chunk, video_key=key,
                                                                   episode_index=index)
                videos[key] = {"file": rel, "from_timestamp": 0.0, "to_timestamp": None}
        return {"data_file": data_file, "length": int(row["length"]), "videos": videos}

    # ----------------------------------------------------------------------------------------------- read
    def read(self, unit: dict) -> Episode:
        raise_if_error_unit(unit)
        uid, file = unit["id"], unit["file"]
        with source_errors(file, uid, "reading LeRobot episode"):
            table = self._rows(unit)
            fields = {name: self._vector(table, key, file, uid) for name, key in self.vector_keys.items()}
            times = self._timestamps(table, file, uid)
            rgb = {name: self._camera(unit, table, key, times) for key, name in self.camera_keys().items()}
            tasks = self._tasks(table) or unit["tasks"]
        language = self.language if self.language is not None else "; ".join(tasks)
        meta = {"file": file, "episode_index": unit["episode_index"], "tasks": tasks,
                "codebase_version": self._info()["codebase_version"],
                "videos": {k: self._file(v["file"]) for k, v in unit["videos"].items()}}
        return build_episode(file, uid, source=self.kind, fps=float(self._info()["fps"]), rgb=rgb,
                             language=language, metadata=meta, **fields)

    def _rows(self, unit: dict):
        """This episode's rows of the data parquet (only the row groups holding it), in frame order."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        file, index = unit["file"], unit["episode_index"]
        if not os.path.isfile(file):
            raise SourceError(file, f"data file of episode {index} is missing; re-download the dataset")
        names = pq.read_schema(file).names
        needed = {"episode_index", "frame_index", "timestamp", *self.vector_keys.values(),
                  *[k for k in self.camera_keys() if k not in unit["videos"]]}
        missing = sorted(needed - set(names))
        if missing:
            raise SourceError(file, f"columns {missing} are missing (columns: {names}); set the feature key "
                                    "options (state_key, action_key, cameras) to existing features or null")
        columns = sorted(needed | ({"task_index"} & set(names)))
        parquet = pq.ParquetFile(file)
        table = parquet.read_row_groups(episode_row_groups(parquet.metadata, index), columns=columns)
        table = table.filter(pc.equal(table.column("episode_index"), index)).sort_by("frame_index")
        if table.num_rows != unit["length"]:
            raise SourceError(file, f"episode {index} has {table.num_rows} rows but its metadata says length "
                                    f"{unit['length']}; the data and meta/episodes disagree")
        frames = table.column("frame_index").to_numpy(zero_copy_only=False)
        if not np.array_equal(frames, np.arange(len(frames))):
            raise SourceError(file, f"episode {index}: frame_index is not 0..{len(frames) - 1} (gaps or repeats)")
        return table

    def _timestamps(self, table, file: str, uid: str) -> np.ndarray:
        return checked_timestamps(table.column("timestamp"), float(self._info()["fps"]), file, uid)

    def _vector(self, table, key: str, file: str, uid: str) -> np.ndarray:
        return vector_column(table.column(key), key, file, uid, self.max_abs)

    def _camera(self, unit: dict, table, key: str, times: np.ndarray) -> np.ndarray:
        if key not in unit["videos"]:
            return decode_images(table.column(key), key, self.path, unit["file"])
        video = unit["videos"][key]
        file = self._file(video["file"])
        query = video["from_timestamp"] + times
        start, stop = video["from_timestamp"], video["to_timestamp"]
        if query.min() < start - self.tolerance_s or (stop is not None and query.max() > stop + self.tolerance_s):
            raise SourceError(file, f"frame timestamps {query.min():.4f}..{query.max():.4f}s fall outside the "
                                    f"episode's span {start:.4f}..{stop}s in this video (meta/episodes "
                                    "from_timestamp/to_timestamp and the data timestamps disagree)")
        if not os.path.isfile(file):
            raise SourceError(file, f"video of camera {key!r} is missing; re-download the dataset")
        return read_frames_at_timestamps(file, query, self.tolerance_s, backend=self.backend)

    def _tasks(self, table) -> list[str]:
        """The episode's task strings in order of first appearance, from task_index and the tasks table."""
        if "task_index" not in table.column_names:
            return []
        table_map = self._task_table()
        indices = table.column("task_index").to_numpy(zero_copy_only=False)
        _, first = np.unique(indices, return_index=True)
        ordered = [int(indices[i]) for i in sorted(first)]
        return [table_map[i] for i in ordered if i in table_map]

    def _task_table(self) -> dict[int, str]:
        if self.is_v3:
            import pyarrow.parquet as pq

            file = self._file("meta/tasks.parquet")
            if not os.path.isfile(file):
                return {}
            frame = pq.read_table(file).to_pandas()
            texts = frame["task"] if "task" in frame.columns else frame.index
            return {int(i): str(t) for i, t in zip(frame["task_index"], texts)}
        file = self._file("meta/tasks.jsonl")
        if not os.path.isfile(file):
            return {}
        with open(file, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        return {int(r["task_index"]): str(r["task"]) for r in rows}


__all__ = ["LeRobotSource", "camera_name", "episode_row_groups"]
