"""RLDS / Open X-Embodiment datasets (TFDS builder directories), read without TensorFlow.

Layout (what ``tfds`` writes; ``<path>`` is the version folder, e.g. ``bridge_orig/1.0.0``)::

    dataset_info.json                      name, splits (shardLengths), fileFormat
    features.json                          the FeaturesDict: steps/{observation/..., action, is_first, ...}
    <name>-<split>.tfrecord-00000-of-00004 one tf.train.Example per episode; optionally gzip-compressed

One unit per episode record. Planning reads only the record headers (length + length CRC); ``read()``
checks the data CRC, parses the record (:mod:`motiondata.sources.rlds_features`) and decodes images
(JPEG/PNG), tensors and text as ``features.json`` declares. A bad CRC, a truncated file or a record that
disagrees with ``features.json`` is an error record for that episode; the records before it are kept.

Cameras are discovered (every 3-channel image under ``steps/observation``) unless given; actions, state and
language come from a ``preset`` (``bridge``, ``fractal``, ``droid``, ``libero``) or from options. Paths may
be fsspec URLs.
"""

from __future__ import annotations

import json
import logging
import re

import fsspec
import numpy as np

from motiondata.episode import Episode, safe_id
from motiondata.errors import SourceError, SpecError
from motiondata.sources.base import (DEFAULT_MAX_ABS, build_episode, check_max_abs, check_positive, error_unit,
                                     raise_if_error_unit, source_errors, vector_field)
from motiondata.sources.rlds_features import FeatureSpec, decode, load_features, parse_record
from motiondata.sources.rlds_presets import DEFAULT_FPS, LANGUAGE_KEYS, PRESETS
from motiondata.sources.rlds_records import RecordError, read_record, scan_records

log = logging.getLogger(__name__)

SHARD_PATTERN = re.compile(r"^(?P<name>.+)-(?P<split>[^-]+)\.tfrecord(-(?P<index>\d+)-of-(?P<count>\d+))?$")


def _keys(value, name: str) -> list[str] | None:
    if value is None:
        return None
    keys = [value] if isinstance(value, str) else value
    if not isinstance(keys, (list, tuple)) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise SpecError(f"option {name}={value!r} must be a key under steps/ (e.g. action) or a list of keys")
    return [k.removeprefix("steps/") for k in keys]


class RldsSource:
    """Episodes of one split of an RLDS dataset.

    Args:
        path: the builder version folder holding ``dataset_info.json`` and ``features.json`` (local or fsspec).
        split: which split's shards to read (``train``, ``val``, ``test``...).
        preset: ``bridge``, ``fractal``, ``droid`` or ``libero``: key layout and fps of that Open-X dataset.
        cameras: ``{name: key}`` or a list of keys under ``steps/`` (``observation/image``); None: every
            3-channel image under ``steps/observation`` (or the preset's), named by its last key component.
        actions, state, joints, ee_pose, gripper: a key under ``steps/`` or a list of keys concatenated in
            order (None: the preset's; ``actions`` defaults to ``action``, ``state`` to ``observation/state``
            when present).
        language: the key of the instruction (default: the preset's, else the first of ``language_instruction``,
            ``observation/natural_language_instruction`` present).
        fps: the control rate (RLDS stores none): the option, else the preset's, else 10 (logged).
        max_abs: vector values with ``|x| > max_abs`` make the episode a record (None: only beyond float32).
    """

    kind = "rlds"

    def __init__(self, path: str, split: str = "train", preset: str | None = None, cameras=None, actions=None,
                 state=None, joints=None, ee_pose=None, gripper=None, language: str | None = None,
                 fps: float | None = None, max_abs: float | None = DEFAULT_MAX_ABS):
        if preset is not None and preset not in PRESETS:
            raise SpecError(f"option preset={preset!r} is not one of {sorted(PRESETS)}; or drop it and set "
                            "cameras/actions/state yourself")
        check_positive("fps", fps)
        if not isinstance(split, str) or not split:
            raise SpecError(f"option split={split!r} must be a split name such as train")
        base = dict(PRESETS.get(preset, {}))
        self.path, self.split, self.preset = str(path).rstrip("/"), split, preset
        self.max_abs = check_max_abs(max_abs)
        self.camera_option = _camera_option(cameras) if cameras is not None else base.get("cameras")
        given = {"actions": actions, "state": state, "joints": joints, "ee_pose": ee_pose, "gripper": gripper}
        self.vector_option = {f: _keys(v, f) if v is not None else base.get(f) for f, v in given.items()}
        self.language_key = (language or base.get("language") or "").removeprefix("steps/") or None
        self.fps = float(fps or base.get("fps") or DEFAULT_FPS)
        self.fps_from = "option" if fps else ("preset" if base.get("fps") else "default")
        fs, root = fsspec.core.url_to_fs(self.path)
        if not fs.exists(root):
            raise SourceError(self.path, "rlds source path does not exist; check the spec's source.path")
        self._features: dict[str, FeatureSpec] | None = None

    # ------------------------------------------------------------------------------------------- metadata
    def _join(self, name: str) -> str:
        return f"{self.path}/{name}"

    def features(self) -> dict[str, FeatureSpec]:
        if self._features is None:
            file = self._join("features.json")
            try:
                self._features = load_features(file)
            except FileNotFoundError as exc:
                raise SourceError(file, "features.json is missing; point path at the TFDS version folder "
                                        "(the one holding dataset_info.json and features.json)") from exc
            except (ValueError, KeyError, TypeError) as exc:
                raise SourceError(file, f"cannot read features.json ({type(exc).__name__}: {exc})") from exc
        return self._features

    def shard_files(self) -> list[str]:
        """The split's TFRecord shards, in shard order."""
        fs, root = fsspec.core.url_to_fs(self.path)
        found = []
        for entry in fs.ls(root, detail=False):
            match = SHARD_PATTERN.match(entry.rstrip("/").rsplit("/", 1)[-1])
            if match and match["split"] == self.split:
                found.append((int(match["index"] or 0), entry))
        if not found:
            raise SourceError(self.path, f"no {self.split!r} TFRecord shards (<name>-{self.split}.tfrecord-NNNNN-of-"
                                         "NNNNN); check option split against dataset_info.json")
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        return [entry if local else fs.unstrip_protocol(entry) for _, entry in sorted(found)]

    def split_info(self) -> dict:
        """``dataset_info.json``'s entry of this split ({} if absent)."""
        try:
            with fsspec.open(self._join("dataset_info.json"), "r") as f:
                info = json.load(f)
        except (OSError, ValueError):
            return {}
        return next((s for s in info.get("splits", []) if s.get("name") == self.split), {})

    # ---------------------------------------------------------------------------------------------- units
    def units(self) -> list[dict]:
        """One unit per intact record header; a corrupt or truncated tail is one error unit per shard."""
        try:
            self.features()
            files = self.shard_files()
        except SourceError as exc:
            return [error_unit(f"rlds_{self.split}", exc.file, exc.reason)]
        units: list[dict] = []
        for shard, file in enumerate(files):
            try:
                records, problem = scan_records(file)
            except OSError as exc:
                units.append(error_unit(f"{self.split}_s{shard:05d}", file, f"cannot open the shard ({exc})"))
                continue
            for index, (offset, _) in enumerate(records):
                units.append({"id": f"{self.split}_s{shard:05d}_e{index:06d}", "file": file, "shard": shard,
                              "record": index, "offset": offset})
            if problem is not None:
                reason = (f"{problem}; the {len(records)} records before it are read, the rest of the shard is "
                          "lost: re-download this shard")
                units.append(error_unit(f"{self.split}_s{shard:05d}_e{problem.index:06d}", file, reason))
        self._check_counts(files, units)
        return units

    def _check_counts(self, files: list[str], units: list[dict]) -> None:
        lengths = self.split_info().get("shardLengths")
        if lengths and len(lengths) == len(files):
            declared, found = sum(int(n) for n in lengths), sum(1 for u in units if not u.get("error"))
            if declared != found:
                log.warning("%s: dataset_info.json declares %d %s episodes, the shards hold %d intact records",
                            self.path, declared, self.split, found)

    # ----------------------------------------------------------------------------------------------- read
    def read(self, unit: dict) -> Episode:
        raise_if_error_unit(unit)
        file, uid = unit["file"], unit["id"]
        try:
            data = read_record(file, int(unit["record"]), int(unit["offset"]))
        except RecordError as exc:
            raise SourceError(file, f"{exc}; re-download this shard", episode=uid) from exc
        with source_errors(file, uid, "decoding the RLDS record"):
            return self._episode(parse_record(data), unit)

    def _episode(self, raw: dict[str, list], unit: dict) -> Episode:
        file, uid = unit["file"], unit["id"]
        steps_specs = {k.removeprefix("steps/"): s for k, s in self.features().items() if k.startswith("steps/")}
        steps = self._step_count(raw, steps_specs, file, uid)
        get = lambda key: self._field(raw, steps_specs, key, steps, file, uid)  # noqa: E731
        rgb = {name: get(key) for name, key in self._cameras(steps_specs).items()}
        vectors = {}
        for field, keys in self._vector_keys(steps_specs).items():
            parts = [vector_field(get(k).reshape(steps, -1), f"steps/{k}", file, uid, self.max_abs) for k in keys]
            vectors[field] = np.concatenate(parts, axis=1)
        meta = {"file": file, "shard": int(unit["shard"]), "record": int(unit["record"]), "fps_from": self.fps_from,
                **self._flags(raw, steps_specs, steps, file, uid), **self._episode_metadata(raw)}
        return build_episode(file, uid, source=self.kind, fps=self.fps, rgb=rgb,
                             language=self._language(raw, steps_specs, steps, file, uid), metadata=meta, **vectors)

    def _step_count(self, raw: dict, specs: dict[str, FeatureSpec], file: str, uid: str) -> int:
        for key in ("is_first", "is_last", "reward"):
            if f"steps/{key}" in raw:
                return len(raw[f"steps/{key}"])
        for key, spec in specs.items():
            if spec.kind in ("image", "text") and f"steps/{key}" in raw:
                return len(raw[f"steps/{key}"])
        raise SourceError(file, "the record has no steps/is_first and no image to count steps by", episode=uid)

    def _field(self, raw: dict, specs: dict, key: str, steps: int, file: str, uid: str) -> np.ndarray:
        if key not in specs:
            raise SourceError(file, f"features.json has no steps/{key}; valid step keys: "
                                    f"{', '.join(sorted(specs))}; fix the source options", episode=uid)
        values = raw.get(f"steps/{key}")
        if values is None:
            raise SourceError(file, f"the record has no steps/{key} although features.json declares it", episode=uid)
        return decode(specs[key], values, steps)

    def _cameras(self, specs: dict[str, FeatureSpec]) -> dict[str, str]:
        if self.camera_option is not None:
            return dict(self.camera_option)
        found = {k: s for k, s in specs.items() if s.kind == "image" and k.startswith("observation/")
                 and (not s.shape or s.shape[-1] == 3)}
        if not found:
            raise SpecError(f"{self.path}: no 3-channel image under steps/observation; set option cameras")
        names = [safe_id(k.rsplit("/", 1)[-1]) for k in sorted(found)]
        if len(set(names)) < len(names):
            names = [safe_id(k.removeprefix("observation/")) for k in sorted(found)]
        return dict(zip(names, sorted(found)))

    def _vector_keys(self, specs: dict[str, FeatureSpec]) -> dict[str, list[str]]:
        keys = {f: k for f, k in self.vector_option.items() if k}
        if "actions" not in keys and "action" in specs:
            keys["actions"] = ["action"]
        if "state" not in keys and "observation/state" in specs:
            keys["state"] = ["observation/state"]
        return keys

    def _language(self, raw: dict, specs: dict, steps: int, file: str, uid: str) -> str:
        candidates = [self.language_key] if self.language_key else [k for k in LANGUAGE_KEYS if k in specs]
        for key in candidates:
            texts = [t for t in self._field(raw, specs, key, steps, file, uid).tolist() if t]
            if texts:
                return str(texts[0]).strip()
        return ""

    def _flags(self, raw: dict, specs: dict, steps: int, file: str, uid: str) -> dict:
        """``is_first`` / ``is_last`` / ``is_terminal`` checked: one episode per record, starting at step 0."""
        flags = {k: np.asarray(raw[f"steps/{k}"], dtype=bool) for k in ("is_first", "is_last", "is_terminal")
                 if f"steps/{k}" in raw}
        first = flags.get("is_first")
        if first is not None and (first.size != steps or not first[0] or first[1:].any()):
            where = np.flatnonzero(first).tolist()[:5]
            raise SourceError(file, f"steps/is_first is set at steps {where}, expected only at step 0: the record is "
                                    "not one whole episode; re-export the dataset", episode=uid)
        last = flags.get("is_last")
        return {"is_last": bool(last[-1]) if last is not None and last.size else None,
                "terminal": bool(flags["is_terminal"].any()) if "is_terminal" in flags else None}

    def _episode_metadata(self, raw: dict) -> dict:
        out = {}
        for key, values in raw.items():
            if key.startswith("episode_metadata/") and len(values) == 1:
                value = values[0]
                out[key.split("/", 1)[1]] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        return {"episode_metadata": out} if out else {}


def _camera_option(cameras) -> dict[str, str]:
    if isinstance(cameras, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in cameras.items()):
        items = cameras.items()
    elif isinstance(cameras, (list, tuple)) and cameras and all(isinstance(c, str) for c in cameras):
        items = ((c.rsplit("/", 1)[-1], c) for c in cameras)
    else:
        raise SpecError(f"option cameras={cameras!r} must be a list of keys under steps/ or a {{name: key}} map")
    out = {safe_id(name): key.removeprefix("steps/") for name, key in items}
    if not out:
        raise SpecError("option cameras is empty; list at least one image key")
    return out
