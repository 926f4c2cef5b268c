"""The source contract and the small helpers every reader shares.

A source lists cheap, JSON-able *units* (one per episode or clip) and reads one unit at a time into an
:class:`~motiondata.episode.Episode`. Every unit has ``"id"`` (store-safe, unique inside the source) and
``"file"`` (the path named in error records). A unit whose file could not even be probed carries an
``"error"`` string; ``read()`` raises :class:`~motiondata.errors.SourceError` for it, so one bad file
becomes one error record instead of a crashed job.

Readers never coerce silently: text in a numeric field, values beyond ``max_abs`` (default
:data:`DEFAULT_MAX_ABS`) or beyond float32, and metadata that contradicts the data raise a SourceError naming
file, episode and field (see :func:`vector_field`).

A reader may also keep ``listing_problems: list[dict]``, reset by every ``units()`` call: one
``{"file", "episode", "unit", "reason"}`` dict per input that ``units()`` deliberately left out (e.g. a
duplicated LeRobot ``meta/episodes`` row), so the planner can turn each into an error record. ``episode`` and
``unit`` are the id of the unit the problem concerns inside this source (or None); the planner prefixes the
source name as it does for units. Readers without the attribute have none (:func:`listing_problems`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from motiondata.episode import Episode, safe_id
from motiondata.errors import EpisodeValidationError, SourceError, SpecError

DEFAULT_MAX_ABS = 1e6  # |x| above this in a vector field is a record (reader option ``max_abs``; null: no limit)
FLOAT32_MAX = float(np.finfo(np.float32).max)
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float

@runtime_checkable
class Source(Protocol):
    kind: str
    path: str

    def units(self) -> list[dict]:
        """JSON-able work units in a deterministic order; cheap (never decodes frames)."""
        ...

    def read(self, unit: dict) -> Episode:
        """Load exactly one unit into memory; raise SourceError for any bad input."""
        ...


def error_unit(unit_id: str, file: str, reason: str, **extra: Any) -> dict:
    """A unit for an input that could not be probed; ``read()`` turns it into a SourceError."""
    return {"id": safe_id(unit_id), "file": str(file), "error": reason, **extra}


def listing_problem(file: str, episode: str | None, reason: str) -> dict:
    """One entry of a reader's ``listing_problems`` (see the module docstring)."""
    uid = None if episode is None else safe_id(episode)
    return {"file": str(file), "episode": uid, "unit": uid, "reason": reason}


def listing_problems(source: Any) -> list[dict]:
    """The inputs ``source.units()`` left out on purpose, each ``{file, episode, reason}``; [] if none."""
    return list(getattr(source, "listing_problems", None) or [])


def raise_if_error_unit(unit: dict) -> None:
    if unit.get("error"):
        raise SourceError(unit.get("file", "?"), unit["error"], episode=unit.get("id"))


def unique_ids(names: list[str], keys: list[str] | None = None) -> list[str]:
    """Store-safe ids for ``names``; names that collide after cleaning get a short hash of their key
    (``keys[i]``, default the name itself), so ids stay deterministic and unique."""
    keys = keys if keys is not None else names
    cleaned = [safe_id(n) for n in names]
    counts = Counter(cleaned)
    out = []
    for cid, key in zip(cleaned, keys):
        if counts[cid] > 1:
            cid = f"{cid}_{hashlib.sha1(str(key).encode()).hexdigest()[:8]}"
        out.append(cid)
    return out


@contextlib.contextmanager
def source_errors(file: str, episode: str | None, what: str = "reading") -> Iterator[None]:
    """Turn any exception raised while reading one unit into a SourceError naming the file."""
    try:
        yield
    except SourceError as exc:
        if exc.episode is None and episode is not None:  # raised by a helper that did not know the unit
            raise SourceError(exc.file, exc.reason, episode=episode) from exc
        raise
    except EpisodeValidationError as exc:
        raise SourceError(file, f"invalid episode: {exc}", episode=episode) from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any bad input must become an error record, never a crash
        raise SourceError(file, f"{what} failed: {type(exc).__name__}: {exc}", episode=episode) from exc


def build_episode(file: str, unit_id: str, **fields: Any) -> Episode:
    """Construct an Episode, reporting validation problems (NaN actions, length mismatch...) as a
    SourceError that names the input file."""
    try:
        return Episode(id=unit_id, **fields)
    except EpisodeValidationError as exc:
        raise SourceError(file, f"invalid episode: {exc}", episode=unit_id) from exc


def require_path(path: str, kind: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SourceError(path, f"{kind} source path does not exist; check the spec's source.path")
    return path


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise SpecError(f"option {name}={value!r} is not one of {list(choices)}")


def check_positive(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise SpecError(f"option {name}={value!r} must be a positive number" + (" or null" if allow_none else ""))


# ---- rotations (all quaternions are xyzw, scalar last, with w >= 0) ----

def canonical_quat(q: np.ndarray) -> np.ndarray:
    """Normalise quaternions and flip their sign so that w >= 0 (q and -q are the same rotation)."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    q = q / np.where(norm > 0, norm, 1.0)
    return np.where(q[..., 3:4] < 0, -q, q)


def axis_angle_to_quat(v: np.ndarray) -> np.ndarray:
    """Rotation vectors (axis * angle, radians), shape (..., 3) -> quaternions xyzw (..., 4)."""
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    half = angle / 2.0
    # sin(a/2)/a -> 1/2 as a -> 0 (Taylor), avoids dividing by zero for the identity rotation
    scale = np.where(angle > 1e-8, np.sin(half) / np.where(angle > 1e-8, angle, 1.0), 0.5 - angle**2 / 48.0)
    return canonical_quat(np.concatenate([v * scale, np.cos(half)], axis=-1))


def euler_xyz_to_quat(e: np.ndarray) -> np.ndarray:
    """Extrinsic x-y-z Euler angles (roll, pitch, yaw; radians), (..., 3) -> quaternions xyzw (..., 4)."""
    e = np.asarray(e, dtype=np.float64)
    cr, cp, cy = (np.cos(e[..., i] / 2) for i in range(3))
    sr, sp, sy = (np.sin(e[..., i] / 2) for i in range(3))
    q = np.stack([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                  cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy], axis=-1)
    return canonical_quat(q)


ROTATION_FORMATS = ("axis_angle", "euler_xyz", "quat_xyzw", "quat_wxyz")


def rotation_to_quat(rot: np.ndarray, fmt: str) -> np.ndarray:
    """Convert (T, 3) or (T, 4) orientations in ``fmt`` to (T, 4) quaternions xyzw.

    A 4-wide input is always a quaternion (xyzw unless ``fmt == "quat_wxyz"``); a 3-wide input is
    axis-angle unless ``fmt == "euler_xyz"``.
    """
    rot = np.asarray(rot, dtype=np.float64)
    if rot.shape[-1] == 4:
        return canonical_quat(rot[..., [1, 2, 3, 0]] if fmt == "quat_wxyz" else rot)
    if rot.shape[-1] == 3:
        return euler_xyz_to_quat(rot) if fmt == "euler_xyz" else axis_angle_to_quat(rot)
    raise ValueError(f"orientation has {rot.shape[-1]} values per step; expected 3 (axis-angle/euler) or 4 (quaternion)")


def check_max_abs(value: Any) -> float | None:
    """Validate the ``max_abs`` reader option: a positive number, or None to disable the range check."""
    check_positive("max_abs", value)
    return None if value is None else float(value)


def _dtype_problem(arr: np.ndarray) -> str | None:
    if arr.dtype.kind in NUMERIC_KINDS:
        return None
    sample = arr.reshape(-1)[:1].tolist()
    what = {"S": "text", "U": "text", "O": "Python objects", "c": "complex numbers"}.get(arr.dtype.kind, "non-numbers")
    if sample and isinstance(sample[0], (str, bytes)):
        what = "text"
    found = f"holds {what} (dtype {arr.dtype}, first value {sample[0]!r})" if sample else f"has dtype {arr.dtype}"
    return found + (", not real numbers; motiondata never casts these silently: rewrite the field as a float "
                    "array or drop the episode")


def _range_problem(arr: np.ndarray, max_abs: float | None) -> str | None:
    """Why ``arr`` (numeric) is out of range, or None. NaN/inf are left to Episode validation."""
    if arr.size == 0 or arr.dtype.kind == "b":
        return None
    mags = np.abs(np.atleast_1d(arr).astype(np.float64, copy=False))
    mags = np.where(np.isfinite(mags), mags, 0.0)
    where = np.unravel_index(int(np.argmax(mags)), mags.shape)
    big = float(mags[where])
    limit = FLOAT32_MAX if max_abs is None else min(max_abs, FLOAT32_MAX)
    if big <= limit:
        return None
    at = f"step {where[0]}" + (f", dim {where[1]}" if len(where) > 1 else "")
    overflow = " (beyond float32: it would be stored as inf)" if big > FLOAT32_MAX else ""
    return (f"max |x| = {big:.4g} at {at} exceeds max_abs = {limit:.4g}{overflow}, which would wreck the norm "
            "stats; fix the data, or raise the reader option max_abs (e.g. options: {max_abs: 1e9}; "
            "null disables the check)")


def vector_field(values: Any, field_name: str, file: str, episode: str | None,
                 max_abs: float | None = DEFAULT_MAX_ABS) -> np.ndarray:
    """(T,) or (T, D) numbers -> (T, D) float32, refusing what a cast would silently get wrong: text
    (``b"0.1"``), non-numeric dtypes and ``|x| > max_abs`` (or beyond float32). Each refusal is a SourceError
    naming ``file``, ``episode`` and ``field_name``."""
    arr = np.asarray(values)
    problem = _dtype_problem(arr) or _range_problem(arr, max_abs)
    if problem is None and arr.ndim not in (1, 2):
        problem = f"has shape {arr.shape}; expected (T,) or (T, D)"
    if problem:
        raise SourceError(file, f"field {field_name!r} {problem}", episode=episode)
    return as_float32_2d(arr)


def as_float32_2d(values: Any) -> np.ndarray:
    """(T,) or (T, D) numbers -> (T, D) float32. Text or other non-numeric values raise ValueError (use
    :func:`vector_field` in readers: it names the file, episode and field)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in NUMERIC_KINDS:
        raise ValueError(f"values {_dtype_problem(arr)}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"expected (T, D) values, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def images_to_uint8(frames: np.ndarray, name: str) -> np.ndarray:
    """(T, H, W, 3) images -> uint8. Float images in [0, 1] are scaled by 255; float images in
    [0, 255] (Diffusion Policy's PushT stores these) are rounded."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.number):
        raise ValueError(f"{name}: images have dtype {frames.dtype}, expected uint8 or float")
    values = frames.astype(np.float32)
    if np.issubdtype(frames.dtype, np.floating) and values.size and float(np.nanmax(values)) <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
