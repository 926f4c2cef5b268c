"""Diffusion Policy replay buffers: a zarr group with ``data/<key>`` arrays concatenated over time and
``meta/episode_ends`` (exclusive end index of every episode).

Read with the ``zarr`` 3 library; DP's buffers on disk are zarr format 2 (a directory, or a ``.zip``
written through ``zarr.ZipStore``), which zarr 3 opens as they are. The store is opened per call, so
forked workers never share a handle; one episode is sliced out of the arrays per read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
from typing import Any

import numpy as np

from motiondata.episode import Episode
from motiondata.errors import SourceError, SpecError
from motiondata.sources.base import (DEFAULT_MAX_ABS, build_episode, check_choice, check_max_abs, check_positive,
                                     error_unit,
                                     images_to_uint8, raise_if_error_unit, require_path, rotation_to_quat,
                                     source_errors, vector_field)

log = logging.getLogger(__name__)

# first present key wins (DP PushT: "state"; DP real robot: "robot_eef_pose"; robomimic-converted: "agent_pos")
STATE_KEYS = ("state", "agent_pos", "robot_eef_pose", "robot_eef_pos", "eef_pos", "robot_state", "qpos")
JOINT_KEYS = ("robot_joint", "joint_pos", "robot0_joint_pos")
GRIPPER_KEYS = ("gripper_pos", "robot0_gripper_qpos", "gripper")
MISSING_CHUNKS = ("auto", "error", "fill")


class _Store:
    """Context manager opening the zarr group (directory or .zip) read-only."""

    def __init__(self, path: str):
        self.path, self.zip = path, None

    def __enter__(self) -> Any:
        import zarr

        _register_optional_codecs()
        if os.path.isfile(self.path):
            self.zip = zarr.storage.ZipStore(self.path, mode="r")
            return zarr.open_group(self.zip, mode="r")
        return zarr.open_group(self.path, mode="r")

    def __exit__(self, *exc: Any) -> None:
        if self.zip is not None:
            self.zip.close()


def _register_optional_codecs() -> None:
    """DP's real-robot buffers compress images with imagecodecs' JPEG-2000; register it when installed."""
    try:
        from imagecodecs.numcodecs import register_codecs
    except ImportError:
        return
    register_codecs()


def _keys(group: Any) -> list[str]:
    return sorted(group.array_keys())


async def _exist(store: Any, keys: list[str]) -> list[bool]:
    return list(await asyncio.gather(*(store.exists(k) for k in keys)))


def missing_chunk_keys(array: Any, start: int, stop: int) -> list[str]:
    """Storage keys (chunks, or shards when sharded; zarr v2 ``0.0`` or v3 ``c/0/0`` names) holding rows
    ``start:stop`` of ``array`` that do not exist in its store. zarr reads a missing chunk as the fill value,
    so a deleted chunk file would otherwise pass as data."""
    from zarr.core.sync import sync

    if stop <= start or not array.shape or array.shape[0] == 0:
        return []
    grid = getattr(array, "shards", None) or array.chunks
    rows = range(start // grid[0], (min(stop, array.shape[0]) - 1) // grid[0] + 1)
    others = [range(math.ceil(n / c)) for n, c in zip(array.shape[1:], grid[1:])]
    keys = [array.metadata.encode_chunk_key(coords) for coords in itertools.product(rows, *others)]
    prefix = array.store_path.path
    found = sync(_exist(array.store_path.store, [f"{prefix}/{k}" if prefix else k for k in keys]))
    return [k for k, ok in zip(keys, found) if not ok]


class ReplayBufferSource:
    """Episodes of a Diffusion Policy ``ReplayBuffer`` zarr.

    Args:
        path: the ``.zarr`` directory or a ``.zarr.zip`` file.
        image_keys: ``data/`` keys holding ``(N, H, W, 3)`` images (camera name = key); None: every such
            4-D array. Float images are scaled to uint8 (``[0, 1]`` floats by 255; PushT's ``[0, 255]``
            floats rounded).
        state_key: the proprio key; None: the first of ``STATE_KEYS`` present.
        action_key: the action key (``"action"`` in DP); None: no actions.
        fps: the recording rate (DP's PushT and real-robot data run at 10 Hz); None: from ``data/timestamp``.
        language: the instruction for every episode (DP buffers hold none).
        max_abs: an episode whose action/state/proprio values hold ``|x| > max_abs`` is an error record
            (None: only values beyond float32). Text arrays are always a record, never parsed.
        missing_chunks: what a chunk absent from the store means. zarr reads it as the fill value, so a
            deleted chunk file would pass as data. ``"error"``: an episode touching one is an error record;
            ``"fill"``: zarr's behaviour (for buffers written with ``write_empty_chunks=False``, where absent
            chunks are all fill value); ``"auto"`` (default): ``"error"``, except for an array with no stored
            chunk at all (an all-fill placeholder, e.g. a black camera written by zarr 3), which is read as
            fill with a warning.

    Rows after the last ``episode_end`` become one error unit (they belong to no episode); ``episode_ends``
    must be 1-D, integer and non-decreasing (a repeated end is an empty episode, which is a record).
    """

    kind = "replay_buffer"

    def __init__(self, path: str, image_keys: list[str] | None = None, state_key: str | None = None,
                 action_key: str | None = "action", fps: float | None = 10.0, language: str = "",
                 max_abs: float | None = DEFAULT_MAX_ABS, missing_chunks: str = "auto"):
        self.path = require_path(path, self.kind)
        self.max_abs = check_max_abs(max_abs)
        check_choice("missing_chunks", missing_chunks, MISSING_CHUNKS)
        self.missing_chunks = missing_chunks
        if image_keys is not None and (isinstance(image_keys, str) or not all(isinstance(k, str) for k in image_keys)):
            raise SpecError(f"option image_keys={image_keys!r} must be a list of data/ keys")
        check_positive("fps", fps)
        if not isinstance(language, str):
            raise SpecError(f"option language={language!r} must be a string")
        self.image_keys = list(image_keys) if image_keys is not None else None
        self.state_key, self.action_key = state_key, action_key
        self.fps, self.language = None if fps is None else float(fps), language

    def units(self) -> list[dict]:
        name = os.path.basename(os.path.normpath(self.path))
        try:
            with _Store(self.path) as root:
                ends = self._episode_ends(root)
                rows = {k: int(root["data"][k].shape[0]) for k in _keys(root["data"]) if root["data"][k].shape}
        except SourceError as exc:
            return [error_unit(name, self.path, exc.reason)]
        except Exception as exc:  # noqa: BLE001 - not a zarr group, unreadable metadata
            return [error_unit(name, self.path, f"cannot open as a zarr replay buffer ({type(exc).__name__}: {exc})")]
        starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
        units = [{"id": f"episode_{i:06d}", "file": self.path, "episode": i, "start": int(s), "stop": int(e)}
                 for i, (s, e) in enumerate(zip(starts, ends))]
        return units + self._tail_units(ends, rows)

    def _tail_units(self, ends: np.ndarray, rows: dict[str, int]) -> list[dict]:
        """One error unit for data rows after the last episode end (they belong to no episode)."""
        last = int(ends[-1]) if len(ends) else 0
        longer = {k: n for k, n in rows.items() if n > last}
        if not longer:
            return []
        total = max(longer.values())
        names = ", ".join(f"data/{k} ({n})" for k, n in sorted(longer.items()))
        reason = (f"rows {last}..{total - 1} belong to no episode: meta/episode_ends ends at {last} but {names} "
                  f"hold more rows (an unfinished last episode?); they are not stored. Append {total} to "
                  f"meta/episode_ends to keep them as an episode, or truncate data/ to {last} rows")
        return [error_unit(f"rows_{last}_{total}", self.path, reason, start=last, stop=total)]

    def _episode_ends(self, root: Any) -> np.ndarray:
        if "meta" not in root or "episode_ends" not in root["meta"]:
            raise SourceError(self.path, "meta/episode_ends is missing; not a Diffusion Policy replay buffer")
        if "data" not in root:
            raise SourceError(self.path, "data/ group is missing; not a Diffusion Policy replay buffer")
        raw = np.asarray(root["meta/episode_ends"][:])
        fix = "rewrite it as a 1-D int64 array of exclusive end rows, one per episode"
        if raw.ndim != 1:
            raise SourceError(self.path, f"meta/episode_ends has shape {raw.shape}, not 1-D; {fix}")
        if raw.dtype.kind not in "iu":
            raise SourceError(self.path, f"meta/episode_ends has dtype {raw.dtype} (first values "
                                         f"{raw[:5].tolist()}), not integers; {fix}")
        ends = raw.astype(np.int64)
        bad = np.flatnonzero(np.diff(np.concatenate([[0], ends])) < 0)
        if len(bad):
            i = int(bad[0])
            before = int(ends[i - 1]) if i else 0
            raise SourceError(self.path, f"meta/episode_ends decreases at index {i} ({before} -> {int(ends[i])}); "
                                         f"ends must be non-decreasing row counts: {fix}")
        return ends

    def read(self, unit: dict) -> Episode:
        raise_if_error_unit(unit)
        uid, start, stop = unit["id"], int(unit["start"]), int(unit["stop"])
        if stop <= start:
            raise SourceError(self.path, f"episode {unit['episode']} is empty (episode_ends repeats {stop})", episode=uid)
        with source_errors(self.path, uid, "reading zarr"):
            with _Store(self.path) as root:
                data = root["data"]
                fields = self._read_fields(data, uid, start, stop)
                fps = self.fps or self._fps_from_timestamps(data, uid, start, stop)
        meta = {"file": self.path, "episode_index": int(unit["episode"]), "start": start, "stop": stop}
        return build_episode(self.path, uid, source=self.kind, fps=fps, language=self.language,
                             metadata=meta, **fields)

    def _slice(self, data: Any, key: str, uid: str, start: int, stop: int) -> np.ndarray:
        array = data[key]
        if array.shape[0] < stop:
            raise SourceError(self.path, f"data/{key} has {array.shape[0]} rows but meta/episode_ends needs "
                                         f"{stop}; the buffer is truncated or inconsistent", episode=uid)
        missing = self._missing_chunks(array, key, start, stop)
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise SourceError(self.path, f"field data/{key}: chunk(s) {shown} holding rows {start}:{stop} are missing "
                                         f"from the store (zarr would read them as fill value {array.fill_value!r});"
                                         " restore the file, or set missing_chunks: fill if they were never "
                                         "written because they are all fill value", episode=uid)
        try:
            return np.asarray(array[start:stop])
        except Exception as exc:  # noqa: BLE001 - missing/corrupt chunk, unknown codec
            hint = " (install imagecodecs for DP's JPEG-2000 images)" if "codec" in str(exc).lower() else ""
            raise SourceError(self.path, f"cannot read data/{key}[{start}:{stop}]: {type(exc).__name__}: "
                                         f"{exc}{hint}", episode=uid) from exc

    def _missing_chunks(self, array: Any, key: str, start: int, stop: int) -> list[str]:
        if self.missing_chunks == "fill":
            return []
        missing = missing_chunk_keys(array, start, stop)
        if missing and self.missing_chunks == "auto" and array.nchunks_initialized == 0:
            log.warning("%s: data/%s has no stored chunk; reading it as fill value %r everywhere (set "
                        "missing_chunks: error to refuse it)", self.path, key, array.fill_value)
            return []
        return missing

    def _vector(self, data: Any, key: str, uid: str, start: int, stop: int) -> np.ndarray:
        values = self._slice(data, key, uid, start, stop)
        return vector_field(values, f"data/{key}", self.path, uid, self.max_abs)

    def _image_keys(self, data: Any, uid: str) -> list[str]:
        keys = _keys(data)
        if self.image_keys is not None:
            missing = [k for k in self.image_keys if k not in keys]
            if missing:
                raise SourceError(self.path, f"image keys {missing} not in data/ (keys: {keys})", episode=uid)
            return self.image_keys
        found = [k for k in keys if data[k].ndim == 4 and data[k].shape[-1] == 3]
        if not found:
            raise SourceError(self.path, f"no (N, H, W, 3) image array in data/ (keys: {keys}); "
                                         "set image_keys", episode=uid)
        return found

    def _read_fields(self, data: Any, uid: str, start: int, stop: int) -> dict[str, Any]:
        keys = _keys(data)
        rgb = {k: images_to_uint8(self._slice(data, k, uid, start, stop), f"data/{k}")
               for k in self._image_keys(data, uid)}
        fields: dict[str, Any] = {"rgb": rgb}
        if self.action_key is not None:
            if self.action_key not in keys:
                raise SourceError(self.path, f"action key data/{self.action_key} missing (keys: {keys}); "
                                             "set action_key (or null for no actions)", episode=uid)
            fields["actions"] = self._vector(data, self.action_key, uid, start, stop)
        state_key = self.state_key or next((k for k in STATE_KEYS if k in keys), None)
        if self.state_key and self.state_key not in keys:
            raise SourceError(self.path, f"state key data/{self.state_key} missing (keys: {keys})", episode=uid)
        if state_key:
            fields["state"] = self._vector(data, state_key, uid, start, stop)
        joint_key = next((k for k in JOINT_KEYS if k in keys), None)
        if joint_key:
            fields["joints"] = self._vector(data, joint_key, uid, start, stop)
        gripper_key = next((k for k in GRIPPER_KEYS if k in keys), None)
        if gripper_key:
            fields["gripper"] = self._vector(data, gripper_key, uid, start, stop)
        if "robot_eef_pose" in keys:
            pose = self._vector(data, "robot_eef_pose", uid, start, stop)
            if pose.shape[1] in (6, 7):  # DP real robot: xyz + rotation vector (UR5 TCP pose)
                quat = rotation_to_quat(pose[:, 3:], "axis_angle").astype(np.float32)
                fields["ee_pose"] = np.concatenate([pose[:, :3], quat], axis=1)
        return fields

    def _fps_from_timestamps(self, data: Any, uid: str, start: int, stop: int) -> float:
        if "timestamp" in _keys(data) and stop - start > 1:
            times = np.asarray(self._slice(data, "timestamp", uid, start, stop)).reshape(-1)
            if times.dtype.kind not in "iuf":
                raise SourceError(self.path, f"data/timestamp has dtype {times.dtype}, not numbers; rewrite it as "
                                             "float seconds or set the fps option", episode=uid)
            times = times.astype(np.float64)
            step = float(np.median(np.diff(times)))
            if np.isfinite(step) and step > 0:
                return 1.0 / step
        log.warning("%s: fps not given and no usable data/timestamp; using 10 Hz", self.path)
        return 10.0
