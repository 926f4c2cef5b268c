"""openpi quantile normalisation of action / state vectors, and the norm-stats file.

Forward: ``(x - q01) / (q99 - q01 + 1e-6) * 2 - 1`` per dimension, no clipping (openpi ``Normalize`` with
``use_quantiles=True``). Inverse: ``(y + 1) / 2 * (q99 - q01 + 1e-6) + q01``.

Stats file (openpi ``norm_stats.json``, also the store's ``stats.json``)::

    {"norm_stats": {"actions": {"mean": [...], "std": [...], "q01": [...], "q99": [...]},
                    "state": {...}}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from motiondata.errors import MotionDataError
from motiondata.store.layout import atomic_write_text

EPS = 1e-6
STAT_KEYS = ("mean", "std", "q01", "q99")


class NormStatsError(MotionDataError, ValueError):
    """Norm stats are missing, malformed, or do not fit the data."""


@dataclass(frozen=True)
class NormStats:
    """Per-dimension statistics of one field (tuples so the dataclass stays hashable)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    q01: tuple[float, ...]
    q99: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.q01)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "stats") -> "NormStats":
        missing = [k for k in ("q01", "q99") if k not in values]
        if missing:
            raise NormStatsError(f"{where}: missing {missing}. Fix: recompute the stats (they need q01 and q99)")
        q01 = _floats(values["q01"])
        parts = {k: _floats(values.get(k, [0.0 if k == "mean" else 1.0] * len(q01))) for k in STAT_KEYS}
        if len({len(v) for v in parts.values()}) != 1:
            raise NormStatsError(f"{where}: mean/std/q01/q99 have different lengths "
                                 f"{ {k: len(v) for k, v in parts.items()} }. Fix: recompute the stats")
        return cls(**parts)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(getattr(self, k)) for k in STAT_KEYS}


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))


def compute_norm_stats(arrays: Sequence[np.ndarray]) -> NormStats:
    """Exact per-dimension stats over the rows of all ``(T, D)`` arrays."""
    rows = np.concatenate([np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in arrays])
    if rows.size == 0:
        raise NormStatsError("no values to compute stats from. Fix: pass non-empty (T, D) arrays")
    q01, q99 = np.quantile(rows, [0.01, 0.99], axis=0)
    return NormStats(_floats(rows.mean(0)), _floats(rows.std(0)), _floats(q01), _floats(q99))


def load_norm_stats(path: str | Path) -> dict[str, NormStats]:
    """Read an openpi ``norm_stats.json`` / store ``stats.json``: field name -> :class:`NormStats`."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NormStatsError(f"{path}: not found. Fix: point to the store's stats.json or a tokenizer "
                             "directory's norm_stats.json") from None
    except json.JSONDecodeError as exc:
        raise NormStatsError(f"{path}: invalid JSON ({exc}). Fix: recompute the stats") from None
    table = payload.get("norm_stats", payload) if isinstance(payload, dict) else None
    if not isinstance(table, dict):
        raise NormStatsError(f"{path}: expected {{'norm_stats': {{field: {{q01, q99, ...}}}}}}. Fix: recompute")
    return {name: NormStats.from_dict(v, f"{path} [{name}]") for name, v in table.items()
            if isinstance(v, dict) and "q01" in v}


def save_norm_stats(path: str | Path, stats: dict[str, NormStats]) -> None:
    payload = {"norm_stats": {name: s.to_dict() for name, s in sorted(stats.items())}}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def stats_for(stats: dict[str, NormStats], field: str, source: str = "stats") -> NormStats:
    if field not in stats:
        raise NormStatsError(f"{source}: no stats for field {field!r} (has {sorted(stats)}). Fix: compute stats "
                             f"over {field!r} or pick another field")
    return stats[field]


@dataclass(frozen=True)
class QuantileNormalize:
    """``(x - q01) / (q99 - q01 + 1e-6) * 2 - 1`` on ``keys`` of a sample dict; :meth:`apply` for arrays."""

    q01: tuple[float, ...]
    q99: tuple[float, ...]
    keys: tuple[str, ...] = ("actions",)

    @classmethod
    def from_stats(cls, stats: NormStats, keys: Sequence[str] = ("actions",)) -> "QuantileNormalize":
        return cls(stats.q01, stats.q99, tuple(keys))

    def apply(self, x: np.ndarray) -> np.ndarray:
        q01, q99 = _bounds(self.q01, self.q99, x)
        return ((x - q01) / (q99 - q01 + EPS) * 2.0 - 1.0).astype(np.float32)

    def inverse(self) -> "QuantileUnnormalize":
        return QuantileUnnormalize(self.q01, self.q99, self.keys)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {**sample, **{k: self.apply(sample[k]) for k in self.keys if k in sample}}


@dataclass(frozen=True)
class QuantileUnnormalize:
    """Inverse of :class:`QuantileNormalize`: ``(y + 1) / 2 * (q99 - q01 + 1e-6) + q01``."""

    q01: tuple[float, ...]
    q99: tuple[float, ...]
    keys: tuple[str, ...] = ("actions",)

    def apply(self, y: np.ndarray) -> np.ndarray:
        q01, q99 = _bounds(self.q01, self.q99, y)
        return ((y + 1.0) / 2.0 * (q99 - q01 + EPS) + q01).astype(np.float32)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {**sample, **{k: self.apply(sample[k]) for k in self.keys if k in sample}}


def _bounds(q01: tuple[float, ...], q99: tuple[float, ...], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.asarray(q01, dtype=np.float64), np.asarray(q99, dtype=np.float64)
    if np.shape(x)[-1] != lo.size:
        raise NormStatsError(f"data has {np.shape(x)[-1]} dims but the stats have {lo.size}. Fix: use the stats "
                             "computed for this field (and this dataset's action layout)")
    return lo, hi
