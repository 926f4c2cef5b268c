"""The LingBot-VA universal 30-dim dual-arm action layout, and the map from a dataset's fields into it.

    0-6   left end-effector  (xyz + quaternion xyzw)     7-13  right end-effector
    14-20 left joints (zero-padded to 7)                 21-27 right joints
    28    left gripper                                   29    right gripper

Unused dimensions are zero. A :class:`UniversalMapping` says which slice of which source field fills each
slot, e.g. ALOHA's 14-dim actions (6 joints + gripper per arm)::

    UniversalMapping.from_dict({"left": {"joints": ["actions", 0, 6], "gripper": ["actions", 6, 7]},
                                "right": {"joints": ["actions", 7, 13], "gripper": ["actions", 13, 14]}})
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator

import numpy as np

from motiondata.errors import MotionDataError

UNIVERSAL_DIM = 30
SLOTS: dict[str, tuple[int, int]] = {
    "left_ee_pose": (0, 7), "right_ee_pose": (7, 14),
    "left_joints": (14, 21), "right_joints": (21, 28),
    "left_gripper": (28, 29), "right_gripper": (29, 30),
}
DEFAULT_FIELD = {"ee_pose": "ee_pose", "joints": "joints", "gripper": "gripper"}
Source = tuple[str, int, int]  # (field, start, stop) into the source array's last axis

PRESETS: dict[str, dict[str, Any]] = {
    "aloha": {"left": {"joints": ["actions", 0, 6], "gripper": ["actions", 6, 7]},
              "right": {"joints": ["actions", 7, 13], "gripper": ["actions", 13, 14]}},
    "single_arm_ee": {"right": {"ee_pose": ["ee_pose", 0, 7], "gripper": ["gripper", 0, 1]}},
}


class UniversalMappingError(MotionDataError, ValueError):
    """A universal-layout mapping is invalid or does not fit the data."""


@dataclass(frozen=True)
class UniversalMapping:
    """Source ``(field, start, stop)`` for each slot of the 30-dim layout; ``None`` leaves it zero."""

    left_ee_pose: Source | None = None
    right_ee_pose: Source | None = None
    left_joints: Source | None = None
    right_joints: Source | None = None
    left_gripper: Source | None = None
    right_gripper: Source | None = None

    def __post_init__(self) -> None:
        for slot, source in self.slots():
            field_name, start, stop = source
            width, room = stop - start, SLOTS[slot][1] - SLOTS[slot][0]
            if start < 0 or width < 1:
                raise UniversalMappingError(f"{slot}: source slice {field_name}[{start}:{stop}] is empty or "
                                            "negative. Fix: give [field, start, stop] with stop > start >= 0")
            kind = slot.split("_", 1)[1]
            if width > room or (kind == "ee_pose" and width != 7):
                need = "exactly 7 (xyz + quaternion xyzw)" if kind == "ee_pose" else f"at most {room}"
                raise UniversalMappingError(f"{slot}: source slice {field_name}[{start}:{stop}] has {width} "
                                            f"dims; the slot takes {need}. Fix: adjust the mapping")

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | str) -> "UniversalMapping":
        """From YAML: a preset name, ``{"left": {"joints": [field, start, stop] | [start, stop]}, ...}`` or
        flat ``{"left_joints": [...]}``. ``[start, stop]`` reads the slot's default field."""
        if isinstance(spec, str):
            if spec not in PRESETS:
                raise UniversalMappingError(f"unknown universal preset {spec!r}. Fix: one of {sorted(PRESETS)}")
            spec = PRESETS[spec]
        flat: dict[str, Any] = {}
        for key, value in spec.items():
            if key in ("left", "right") and isinstance(value, dict):
                flat.update({f"{key}_{kind}": src for kind, src in value.items()})
            else:
                flat[key] = value
        unknown = sorted(set(flat) - set(SLOTS))
        if unknown:
            raise UniversalMappingError(f"unknown slots {unknown}. Fix: use left/right with ee_pose, joints, gripper")
        return cls(**{slot: _source(slot, src) for slot, src in flat.items() if src is not None})

    def slots(self) -> Iterator[tuple[str, Source]]:
        for f in fields(self):
            source = getattr(self, f.name)
            if source is not None:
                yield f.name, source

    def used_mask(self) -> np.ndarray:
        """``(30,)`` uint8: 1 where a dimension is filled from the data."""
        mask = np.zeros(UNIVERSAL_DIM, np.uint8)
        for slot, (_, start, stop) in self.slots():
            mask[SLOTS[slot][0]:SLOTS[slot][0] + stop - start] = 1
        return mask

    def to_universal(self, source: dict[str, np.ndarray]) -> np.ndarray:
        """Source fields ``{name: (T, D)}`` -> ``(T, 30)`` float32, zero where unmapped."""
        length = _common_length(source, [src[0] for _, src in self.slots()])
        out = np.zeros((length, UNIVERSAL_DIM), np.float32)
        for slot, (name, start, stop) in self.slots():
            arr = np.asarray(source[name])
            if arr.ndim != 2 or arr.shape[1] < stop:
                raise UniversalMappingError(f"field {name!r} has shape {arr.shape}; slot {slot} reads "
                                            f"{name}[:, {start}:{stop}]. Fix: adjust the mapping to this dataset")
            out[:, SLOTS[slot][0]:SLOTS[slot][0] + stop - start] = arr[:, start:stop]
        return out

    def from_universal(self, universal: np.ndarray, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """``(T, 30)`` -> source fields; ``dims`` gives each field's width (default: the highest stop)."""
        universal = np.asarray(universal)
        if universal.ndim != 2 or universal.shape[1] != UNIVERSAL_DIM:
            raise UniversalMappingError(f"universal actions have shape {universal.shape}, expected (T, 30)")
        widths: dict[str, int] = {}
        for _, (name, _, stop) in self.slots():
            widths[name] = max(widths.get(name, 0), stop)
        for name, width in (dims or {}).items():
            if width < widths.get(name, 0):
                raise UniversalMappingError(f"dims[{name!r}] = {width} but the mapping reads up to column "
                                            f"{widths[name]}. Fix: give the field's full width")
            widths[name] = int(width)
        out = {name: np.zeros((len(universal), width), np.float32) for name, width in widths.items()}
        for slot, (name, start, stop) in self.slots():
            out[name][:, start:stop] = universal[:, SLOTS[slot][0]:SLOTS[slot][0] + stop - start]
        return out


def _source(slot: str, src: Any) -> Source:
    values = list(src)
    if len(values) == 2:
        values = [DEFAULT_FIELD[slot.split("_", 1)[1]], *values]
    if len(values) != 3 or not isinstance(values[0], str):
        raise UniversalMappingError(f"{slot}: expected [field, start, stop] or [start, stop], got {src!r}")
    return (values[0], int(values[1]), int(values[2]))


def _common_length(source: dict[str, np.ndarray], names: list[str]) -> int:
    missing = sorted({n for n in names if source.get(n) is None})
    if missing:
        raise UniversalMappingError(f"the mapping reads fields {missing} that this episode lacks (has "
                                    f"{sorted(k for k, v in source.items() if v is not None)}). "
                                    "Fix: map fields the dataset has")
    lengths = {len(source[n]) for n in names}
    if len(lengths) > 1:
        raise UniversalMappingError(f"mapped fields have different lengths {sorted(lengths)}. Fix: trim them")
    return lengths.pop() if lengths else 0
