"""LIBERO / robomimic HDF5 demonstrations: ``data/demo_<i>/{actions, obs/...}``.

One unit per demo. Files are opened per read (never held open, so forked workers never share a handle);
only the demo being read is loaded into memory. See ``docs/sources.md`` for the key mapping.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from motiondata.episode import Episode, safe_id
from motiondata.errors import SourceError, SpecError
from motiondata.sources.base import (DEFAULT_MAX_ABS, ROTATION_FORMATS, build_episode, check_choice, check_max_abs,
                                     error_unit, raise_if_error_unit, require_path, rotation_to_quat, source_errors,
                                     unique_ids, vector_field)

log = logging.getLogger(__name__)

HDF5_EXTENSIONS = (".hdf5", ".h5", ".he5")
CAMERA_SUFFIXES = ("_rgb", "_image")
DEFAULT_FPS = 20.0
# (state parts, joints, gripper) per layout, first match wins; ``robot_states`` (demo level) is the fallback state
PROPRIO_LAYOUTS = {
    "libero": (("joint_states", "gripper_states"), "joint_states", "gripper_states"),
    "robomimic": (("robot0_joint_pos", "robot0_gripper_qpos"), "robot0_joint_pos", "robot0_gripper_qpos"),
}
EE_LAYOUTS = (("ee_pos", "ee_ori"), ("robot0_eef_pos", "robot0_eef_quat"))


def _open(path: str):
    import h5py

    return h5py.File(path, "r", locking=False)


def _open_reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if match:
        return (f"HDF5 file is truncated ({match.group(1)} of {match.group(2)} bytes on disk); "
                "re-download or re-copy it")
    return f"cannot open as HDF5 ({type(exc).__name__}: {text}); is it an HDF5 file and complete?"


def _demo_sort_key(name: str) -> tuple:
    match = re.search(r"(\d+)$", name)
    return (0, int(match.group(1)), name) if match else (1, 0, name)


def language_from_filename(path: str) -> str:
    """LIBERO's convention: the task words of ``KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5``."""
    words = re.sub(r"_demo$", "", Path(path).stem).split("_")
    while words and (words[0].isupper() or words[0].isdigit()):
        words.pop(0)
    return " ".join(w for w in words if w)


def _json_attr(group: Any, name: str) -> dict:
    raw = group.attrs.get(name)
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        value = json.loads(str(raw))
    except json.JSONDecodeError:
        log.warning("data attribute %r is not valid JSON; ignoring it", name)
        return {}
    return value if isinstance(value, dict) else {}


def _unique_unit_ids(units: list[dict], root: str) -> list[dict]:
    """Demo names that clean to the same id (``demo 1`` / ``demo_1``, or file ``a_demo`` + ``0`` vs file ``a`` +
    ``demo_0``) get a short hash of the file (relative to ``root``, so ids survive moving the dataset) and the
    demo name, so every unit id is unique inside the source."""
    keys = [f"{os.path.relpath(u['file'], root)}::{u.get('demo', '')}" for u in units]
    ids = unique_ids([u["id"] for u in units], keys)
    return [dict(u, id=i) for u, i in zip(units, ids)]


class Hdf5DemoSource:
    """Reads ``data/demo_<i>`` groups from one HDF5 file or a folder of them.

    Args:
        path: an ``.hdf5`` file or a folder (searched recursively, sorted).
        flip: rotate images (and depth) by 180 degrees, i.e. flip both H and W. LIBERO (and robosuite's
            default "opengl" convention) stores images upside down; ``flip=True`` makes them upright.
            ``"auto"`` flips when the file's ``data`` attrs say ``macros_image_convention == "opengl"``.
        cameras: camera names (``agentview``) or obs keys (``agentview_rgb``); None: every 4-D uint8
            ``obs`` dataset whose key ends with ``_rgb`` or ``_image``.
        depth: also read ``obs/<camera>_depth`` when present.
        language: the instruction; None: ``problem_info.language_instruction``, else the file name's words.
        ee_rotation: how ``ee_ori`` is stored when it has 3 values per arm (``axis_angle``, LIBERO's, or
            ``euler_xyz``), or which quaternion order (``quat_xyzw``, default for 4 values, or ``quat_wxyz``).
        filter_key: robomimic filter key (``mask/<filter_key>`` lists the demos to read), e.g. ``"train"``.
        max_abs: a demo whose actions/state/proprio hold ``|x| > max_abs`` is an error record (None: only
            values beyond float32). Text datasets (``b"0.1"``) in those fields are always a record.
    """

    kind = "hdf5"

    def __init__(self, path: str, flip: bool | str = False, cameras: list[str] | None = None, depth: bool = True,
                 language: str | None = None, ee_rotation: str = "axis_angle", filter_key: str | None = None,
                 max_abs: float | None = DEFAULT_MAX_ABS):
        self.path = require_path(path, self.kind)
        self.max_abs = check_max_abs(max_abs)
        if flip not in (True, False, "auto"):
            raise SpecError(f"option flip={flip!r} must be true, false or \"auto\"")
        if cameras is not None and (isinstance(cameras, str) or not all(isinstance(c, str) for c in cameras)):
            raise SpecError(f"option cameras={cameras!r} must be a list of camera names")
        if language is not None and not isinstance(language, str):
            raise SpecError(f"option language={language!r} must be a string")
        check_choice("ee_rotation", ee_rotation, ROTATION_FORMATS)
        self.flip, self.depth, self.language = flip, bool(depth), language
        self.cameras = list(cameras) if cameras is not None else None
        self.ee_rotation, self.filter_key = ee_rotation, filter_key
        self.files = self._files()

    def _files(self) -> list[str]:
        if os.path.isfile(self.path):
            return [self.path]
        found = sorted(str(p) for p in Path(self.path).rglob("*") if p.suffix.lower() in HDF5_EXTENSIONS)
        if not found:
            raise SourceError(self.path, f"no {'/'.join(HDF5_EXTENSIONS)} files in this folder")
        return found

    # ------------------------------------------------------------------ units
    def units(self) -> list[dict]:
        single = len(self.files) == 1 and os.path.isfile(self.path)
        stems = [os.path.splitext(os.path.relpath(f, self.path if not single else os.path.dirname(f)))[0]
                 for f in self.files]
        bases = unique_ids(stems, self.files)
        units = []
        for file, base in zip(self.files, bases):
            try:
                demos = self._demo_names(file)
            except SourceError as exc:
                units.append(error_unit(base, file, exc.reason))
                continue
            for demo in demos:
                units.append({"id": safe_id(demo if single else f"{base}_{demo}"), "file": file, "demo": demo})
        return _unique_unit_ids(units, os.path.dirname(self.path) if single else self.path)

    def _demo_names(self, file: str) -> list[str]:
        try:
            with _open(file) as f:
                if "data" not in f:
                    raise SourceError(file, f"no 'data' group (top-level keys: {sorted(f.keys())}); "
                                            "expected LIBERO/robomimic layout data/demo_<i>")
                names = [k for k in f["data"].keys() if hasattr(f["data"][k], "keys")]
                if self.filter_key is not None:
                    names = self._filtered(f, file, names)
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/RuntimeError for bad files
            raise SourceError(file, _open_reason(exc)) from exc
        return sorted(names, key=_demo_sort_key)

    def _filtered(self, f: Any, file: str, names: list[str]) -> list[str]:
        key = f"mask/{self.filter_key}"
        if key not in f:
            masks = sorted(f["mask"].keys()) if "mask" in f else []
            raise SourceError(file, f"filter key {self.filter_key!r} not found (file has {masks})")
        keep = {v.decode() if isinstance(v, bytes) else str(v) for v in f[key][()]}
        return [n for n in names if n in keep]

    # ------------------------------------------------------------------ read
    def read(self, unit: dict) -> Episode:
        raise_if_error_unit(unit)
        file, demo, uid = unit["file"], unit["demo"], unit["id"]
        with source_errors(file, uid, "reading HDF5"):
            with _open(file) as f:
                if "data" not in f or demo not in f["data"]:
                    raise SourceError(file, f"group data/{demo} not found", episode=uid)
                data = f["data"]
                fields, meta = DemoReader(self, file, uid, data[demo]).read()
                fields["fps"], env_name = self._fps_env(data)
                fields["language"] = self._language(data, file)
                meta.update(file=file, demo=demo, env_name=env_name)
        return build_episode(file, uid, source=self.kind, metadata=meta, **fields)

    def _fps_env(self, data: Any) -> tuple[float, str]:
        env_args = _json_attr(data, "env_args")
        freq = (env_args.get("env_kwargs") or {}).get("control_freq")
        usable = isinstance(freq, (int, float)) and not isinstance(freq, bool) and np.isfinite(freq) and freq > 0
        if freq is not None and not usable:
            log.warning("env_args control_freq=%r is not a positive number; using %s fps", freq, DEFAULT_FPS)
        fps = float(freq) if usable else DEFAULT_FPS
        return fps, str(env_args.get("env_name", ""))

    def _language(self, data: Any, file: str) -> str:
        if self.language is not None:
            return self.language
        text = _json_attr(data, "problem_info").get("language_instruction")
        if isinstance(text, list):  # some LIBERO exports store a one-element list
            text = " ".join(map(str, text))
        return str(text).strip() if text else language_from_filename(file)

    def flips(self, data: Any) -> bool:
        if self.flip == "auto":
            convention = data.attrs.get("macros_image_convention", b"")
            convention = convention.decode() if isinstance(convention, bytes) else str(convention)
            return convention.lower() == "opengl"
        return bool(self.flip)


class DemoReader:
    """Reads the fields of one ``data/demo_<i>`` group, checking every key and length."""

    def __init__(self, source: Hdf5DemoSource, file: str, uid: str, group: Any):
        self.source, self.file, self.uid, self.group = source, file, uid, group
        self.prefix = group.name.lstrip("/")
        if "obs" not in group:
            self.fail(f"{self.prefix} has no 'obs' group (keys: {sorted(group.keys())})")
        self.obs = group["obs"]
        self.length: int | None = None
        self.length_key = ""

    def fail(self, reason: str) -> None:
        raise SourceError(self.file, reason, episode=self.uid)

    def load(self, parent: Any, key: str, required: bool = False) -> np.ndarray | None:
        """Read ``parent[key]`` fully and check its step count against the cameras'."""
        where = f"{parent.name.lstrip('/')}/{key}"
        if key not in parent:
            if required:
                self.fail(f"{where} is missing ({parent.name.lstrip('/')} has {sorted(parent.keys())}); "
                          "re-export the demo or drop it")
            return None
        try:
            array = np.asarray(parent[key][()])
        except Exception as exc:  # noqa: BLE001 - corrupt chunks, bad filters
            raise SourceError(self.file, f"cannot read {where}: {type(exc).__name__}: {exc}", episode=self.uid) from exc
        if array.ndim == 0:
            self.fail(f"{where} is a scalar, expected one row per step")
        if self.length is None:
            self.length, self.length_key = array.shape[0], where
        elif array.shape[0] != self.length:
            self.fail(f"{where} has {array.shape[0]} steps but {self.length_key} has {self.length}; "
                      "the demo's datasets must have equal lengths")
        return array

    def vector(self, parent: Any, key: str, required: bool = False) -> np.ndarray | None:
        """``parent[key]`` as (T, D) float32; text, non-numeric dtypes and ``|x| > max_abs`` are records."""
        values = self.load(parent, key, required)
        if values is None:
            return None
        where = f"{parent.name.lstrip('/')}/{key}"
        return vector_field(values, where, self.file, self.uid, self.source.max_abs)

    def camera_keys(self) -> dict[str, str]:
        found = {}
        for key in sorted(self.obs.keys()):
            ds = self.obs[key]
            if key.endswith(CAMERA_SUFFIXES) and getattr(ds, "ndim", 0) == 4 and ds.dtype == np.uint8 \
                    and ds.shape[-1] == 3:
                found[key[: key.rfind("_")]] = key
        wanted = self.source.cameras
        if wanted is None:
            if not found:
                self.fail(f"no camera images in {self.prefix}/obs (looked for 4-D uint8 datasets ending "
                          f"{'/'.join(CAMERA_SUFFIXES)}; keys: {sorted(self.obs.keys())})")
            return found
        by_key = {v: k for k, v in found.items()}
        picked = {}
        for name in wanted:
            cam = name if name in found else by_key.get(name)
            if cam is None:
                self.fail(f"camera {name!r} not in {self.prefix}/obs (cameras: {sorted(found)})")
            picked[cam] = found[cam]
        return picked

    def read(self) -> tuple[dict[str, Any], dict[str, Any]]:
        flip = self.source.flips(self.group.parent)
        rgb, depth = {}, {}
        for cam, key in self.camera_keys().items():
            frames = self.load(self.obs, key)
            rgb[cam] = np.ascontiguousarray(frames[:, ::-1, ::-1]) if flip else frames
            if self.source.depth:
                d = self.read_depth(cam)
                if d is not None:
                    depth[cam] = np.ascontiguousarray(d[:, ::-1, ::-1]) if flip else d
        fields: dict[str, Any] = {"rgb": rgb, "depth": depth}
        fields["actions"] = self.vector(self.group, "actions", required=True)
        layout = self.read_proprio(fields)
        fields["ee_pose"] = self.read_ee_pose()
        return fields, {"format": layout, "flipped": flip}

    def read_depth(self, cam: str) -> np.ndarray | None:
        key = f"{cam}_depth"
        values = self.load(self.obs, key)
        if values is None:
            return None
        if values.ndim == 4 and values.shape[-1] == 1:
            values = values[..., 0]
        if values.ndim != 3:
            self.fail(f"{self.prefix}/obs/{key} has shape {values.shape}; expected (T, H, W) or (T, H, W, 1)")
        if values.dtype.kind not in "iuf":
            self.fail(f"{self.prefix}/obs/{key} has dtype {values.dtype}, not numbers; rewrite it as float metres "
                      "or integer millimetres, or set depth: false")
        attrs = self.obs[key].attrs
        scale = next((float(attrs[a]) for a in ("depth_scale", "scale") if a in attrs), None)
        if scale is None:
            scale = 0.001 if np.issubdtype(values.dtype, np.integer) else 1.0  # integer depth: millimetres
        return (values.astype(np.float32) * np.float32(scale)).astype(np.float32)

    def read_proprio(self, fields: dict[str, Any]) -> str:
        for layout, (state_keys, joints_key, gripper_key) in PROPRIO_LAYOUTS.items():
            if all(k in self.obs for k in state_keys):
                parts = [self.vector(self.obs, k) for k in state_keys]
                fields["state"] = np.concatenate(parts, axis=1)
                fields["joints"] = self.vector(self.obs, joints_key)
                fields["gripper"] = self.vector(self.obs, gripper_key)
                return layout
        robot_states = self.vector(self.group, "robot_states")
        if robot_states is not None:
            fields["state"] = robot_states
        return "generic"

    def read_ee_pose(self) -> np.ndarray | None:
        for pos_key, ori_key in EE_LAYOUTS:
            if pos_key in self.obs and ori_key in self.obs:
                pos, ori = self.vector(self.obs, pos_key), self.vector(self.obs, ori_key)
                return self.combine_pose(pos, ori, f"{self.prefix}/obs/{pos_key}+{ori_key}")
        return None

    def combine_pose(self, pos: np.ndarray, ori: np.ndarray, where: str) -> np.ndarray | None:
        """xyz (T, 3k) + orientation (T, 3k or 4k) -> (T, 7k): xyz + quaternion xyzw per arm."""
        arms = pos.shape[1] // 3
        if arms < 1 or pos.shape[1] % 3 or ori.shape[1] % arms or ori.shape[1] // arms not in (3, 4):
            log.warning("%s: %s widths %d/%d do not split into arms; ee_pose skipped",
                        self.file, where, pos.shape[1], ori.shape[1])
            return None
        width = ori.shape[1] // arms
        parts = []
        for arm in range(arms):
            quat = rotation_to_quat(ori[:, arm * width:(arm + 1) * width], self.source.ee_rotation)
            parts += [pos[:, arm * 3:(arm + 1) * 3], quat.astype(np.float32)]
        return np.concatenate(parts, axis=1)
