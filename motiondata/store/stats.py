"""Mergeable normalisation statistics, written in openpi's ``norm_stats.json`` format.

Each shard keeps a *partial*: per field and per dimension the count, mean, ``M2`` (sum of squared
deviations), min, max and a quantile sketch. Partials merge exactly (any split, any order), so the
job's ``stats.json`` comes from the shard partials without re-reading data, and stores of several
datasets can be combined later (what Octo cannot do with its quantiles).

- mean / M2: Chan et al.'s pairwise update in float64; merged results agree with a one-pass
  computation to float rounding (about 1e-12 relative).
- quantiles: a DDSketch (Masson et al., 2019). A value ``x`` with ``|x| >= zero_threshold`` goes to
  bucket ``k = ceil(log_gamma |x|)``, ``gamma = (1 + alpha) / (1 - alpha)``, in a positive or a negative
  store; smaller values go to one zero bucket. A bucket represents the value ``2 gamma^k / (gamma + 1)``,
  within relative error ``alpha`` of every value in it. Merging adds bucket counts, which is exact.

  Guarantee: for quantile ``q`` of ``n`` values, let ``x_lo <= x_hi`` be the order statistics around the
  position ``q (n - 1)`` (what ``np.quantile``'s linear method interpolates). The estimate ``e`` satisfies
  ``|e - np.quantile(x, q)| <= alpha * max(|x_lo|, |x_hi|) + zero_threshold``; when ``x_lo`` and ``x_hi``
  have the same sign this is ``<= alpha * |np.quantile(x, q)| + zero_threshold``. Estimates are clipped to
  the exact [min, max], so a constant dimension is exact.

Partials on disk (``OUT/shards/shard-NNNNNN.stats.bin``, :func:`partial_bytes`): a magic, a small JSON
header and little-endian float64/int64 arrays, loaded as views without parsing (finalize merges 250k of
them); no pickle. Stores written before hold ``shard-NNNNNN.stats.json`` (``to_dict``), still read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from motiondata.errors import StoreError
from motiondata.store.layout import atomic_write_bytes, atomic_write_text, shard_stats, shard_stats_json, stats_file

DEFAULT_ALPHA = 0.005
ZERO_THRESHOLD = 1e-8
_OFFSET = 1 << 20  # bucket indices of float64 values lie within +-75000
_STRIDE = 1 << 21  # sketch keys are dim * _STRIDE + bucket + _OFFSET, sorted
PARTIAL_VERSION = 1
_MAGIC = b"MDSTATS\x01"  # binary partials (partial_bytes); older stores hold the JSON of to_dict()
_BODY = ("<f8",) * 4 + ("<i8",) * 5  # mean, M2, min, max (D); zero (D); pos keys, counts; neg keys, counts


def _merge_sparse(k1: np.ndarray, c1: np.ndarray, k2: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add two sparse count vectors (sorted unique keys)."""
    if not len(k2):
        return k1, c1
    if not len(k1):
        return k2, c2
    keys, inverse = np.unique(np.concatenate([k1, k2]), return_inverse=True)
    counts = np.zeros(len(keys), dtype=np.int64)
    np.add.at(counts, inverse, np.concatenate([c1, c2]))
    return keys, counts


@dataclass
class _FieldStats:
    """Running statistics of one field, shape (D,) per statistic."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    zero: np.ndarray
    pos: tuple[np.ndarray, np.ndarray]
    neg: tuple[np.ndarray, np.ndarray]

    @classmethod
    def empty(cls, dim: int) -> "_FieldStats":
        f, none = np.zeros(dim), (np.zeros(0, np.int64), np.zeros(0, np.int64))
        return cls(0, f.copy(), f.copy(), np.full(dim, np.inf), np.full(dim, -np.inf),
                   np.zeros(dim, np.int64), none, none)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def merge(self, other: "_FieldStats") -> None:
        if other.count == 0:
            return
        self.merge_moments(other)
        self.pos = _merge_sparse(*self.pos, *other.pos)
        self.neg = _merge_sparse(*self.neg, *other.neg)

    def merge_moments(self, other: "_FieldStats") -> None:
        """Count, mean, M2, min, max and zero count of ``other`` added (the sketch buckets are not)."""
        n = self.count + other.count
        if other.count == 0:
            return
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.count = n
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.zero = self.zero + other.zero


class RunningStats:
    """Per-field running statistics; ``update`` with ``(N, D)`` arrays, ``merge`` partials exactly."""

    def __init__(self, alpha: float = DEFAULT_ALPHA, zero_threshold: float = ZERO_THRESHOLD):
        if not 0 < alpha < 1:
            raise ValueError(f"alpha {alpha} must be in (0, 1); 0.005 means 0.5% relative error")
        self.alpha, self.zero_threshold = float(alpha), float(zero_threshold)
        self.gamma = (1 + self.alpha) / (1 - self.alpha)
        self._log_gamma = math.log(self.gamma)
        self.fields: dict[str, _FieldStats] = {}

    def _field(self, name: str, dim: int) -> _FieldStats:
        stats = self.fields.setdefault(name, _FieldStats.empty(dim))
        if stats.dim != dim:
            raise ValueError(f"stats field {name!r}: got {dim} dims, earlier data had {stats.dim}; "
                             "keep one layout per field (pad to the universal layout first)")
        return stats

    def _bucket_counts(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, dims = np.nonzero(mask)
        buckets = np.ceil(np.log(np.abs(x[rows, dims])) / self._log_gamma).astype(np.int64)
        return np.unique(dims.astype(np.int64) * _STRIDE + buckets + _OFFSET, return_counts=True)

    def update(self, name: str, values: np.ndarray) -> None:
        """Add ``values`` of shape ``(N, D)`` (N steps, D dims) to field ``name``."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"stats field {name!r}: values of shape {x.shape}, expected (N, D); "
                             "reshape with values.reshape(-1, D)")
        if not np.isfinite(x).all():
            raise ValueError(f"stats field {name!r}: non-finite values; clean the data before computing stats")
        target = self._field(name, x.shape[1])
        if x.shape[0] == 0:
            return
        mean = x.mean(axis=0)
        small = np.abs(x) < self.zero_threshold
        batch = _FieldStats(x.shape[0], mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0),
                            small.sum(axis=0).astype(np.int64), self._bucket_counts(x, (x > 0) & ~small),
                            self._bucket_counts(x, (x < 0) & ~small))
        target.merge(batch)

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Add ``other``'s data to this one (in place; returns self)."""
        if (other.alpha, other.zero_threshold) != (self.alpha, self.zero_threshold):
            raise ValueError(f"cannot merge sketches with alpha/zero_threshold {other.alpha}/{other.zero_threshold} "
                             f"into {self.alpha}/{self.zero_threshold}; compute all partials with one setting")
        for name, stats in other.fields.items():
            self._field(name, stats.dim).merge(stats)
        return self

    def _dim_buckets(self, stats: _FieldStats, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Representative values (ascending) and counts of dimension ``d``'s buckets."""
        parts_v, parts_c = [], []
        for sign, (keys, counts) in ((-1.0, stats.neg), (1.0, stats.pos)):
            lo, hi = np.searchsorted(keys, [d * _STRIDE, (d + 1) * _STRIDE])
            buckets = keys[lo:hi] - d * _STRIDE - _OFFSET
            values = sign * 2.0 * np.exp(buckets * self._log_gamma) / (self.gamma + 1.0)
            cnt = counts[lo:hi]
            if sign < 0:
                values, cnt = values[::-1], cnt[::-1]
            parts_v.append(values)
            parts_c.append(cnt)
            if sign < 0:
                parts_v.append(np.zeros(1))
                parts_c.append(stats.zero[d : d + 1])
        return np.concatenate(parts_v), np.concatenate(parts_c)

    def quantiles(self, name: str, qs: Iterable[float]) -> np.ndarray:
        """Estimated quantiles, shape ``(len(qs), D)``, positioned like ``np.quantile`` (linear)."""
        stats = self.fields.get(name)
        if stats is None or stats.count == 0:
            raise StoreError(f"no data for stats field {name!r}; call update() first")
        q = np.asarray(list(qs), dtype=np.float64)
        pos = q * (stats.count - 1)
        lo, frac = np.floor(pos), pos - np.floor(pos)
        hi = np.minimum(lo + 1, stats.count - 1)
        out = np.empty((len(q), stats.dim))
        for d in range(stats.dim):
            values, counts = self._dim_buckets(stats, d)
            cum = np.cumsum(counts)
            v_lo, v_hi = (_item_values(values, cum, rank, stats, d) for rank in (lo, hi))
            out[:, d] = (1 - frac) * v_lo + frac * v_hi
        return np.clip(out, stats.min, stats.max)

    def norm_stats(self) -> dict[str, Any]:
        """``{"norm_stats": {name: {"mean", "std", "q01", "q99"}}}`` (openpi format; std is the population std)."""
        result = {}
        for name in sorted(self.fields):
            stats = self.fields[name]
            if stats.count == 0:
                continue
            q01, q99 = self.quantiles(name, [0.01, 0.99])
            std = np.sqrt(np.maximum(stats.m2 / stats.count, 0.0))
            result[name] = {"mean": stats.mean.tolist(), "std": std.tolist(), "q01": q01.tolist(), "q99": q99.tolist()}
        return {"norm_stats": result}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able partial (exact: float64 values round-trip through JSON)."""
        fields = {}
        for name in sorted(self.fields):
            s = self.fields[name]
            fields[name] = {"count": s.count, "mean": s.mean.tolist(), "M2": s.m2.tolist(),
                            "min": s.min.tolist() if s.count else None, "max": s.max.tolist() if s.count else None,
                            "dim": s.dim, "zero": s.zero.tolist(),
                            "pos": _sparse_to_json(*s.pos), "neg": _sparse_to_json(*s.neg)}
        return {"version": PARTIAL_VERSION, "alpha": self.alpha, "zero_threshold": self.zero_threshold,
                "fields": fields}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunningStats":
        if not isinstance(d, dict) or d.get("version") != PARTIAL_VERSION or "fields" not in d:
            raise StoreError(f"not a motiondata stats partial (version {PARTIAL_VERSION}); write it with to_dict()")
        stats = cls(alpha=d["alpha"], zero_threshold=d["zero_threshold"])
        for name, f in d["fields"].items():
            dim = int(f["dim"])
            empty = _FieldStats.empty(dim)
            has = int(f["count"]) > 0
            stats.fields[name] = _FieldStats(
                int(f["count"]), np.asarray(f["mean"], np.float64), np.asarray(f["M2"], np.float64),
                np.asarray(f["min"], np.float64) if has else empty.min, np.asarray(f["max"], np.float64) if has else empty.max,
                np.asarray(f["zero"], np.int64), _sparse_from_json(f["pos"]), _sparse_from_json(f["neg"]))
        return stats


def _item_values(values: np.ndarray, cum: np.ndarray, ranks: np.ndarray, stats: _FieldStats, d: int) -> np.ndarray:
    """Estimated values of the items at 0-based ``ranks``; the first and last items are the exact min/max."""
    est = values[np.searchsorted(cum, ranks, side="right")]
    return np.where(ranks == 0, stats.min[d], np.where(ranks == stats.count - 1, stats.max[d], est))


def _sparse_to_json(keys: np.ndarray, counts: np.ndarray) -> dict[str, list[int]]:
    dims, buckets = np.divmod(keys, _STRIDE)
    return {"dim": dims.tolist(), "key": (buckets - _OFFSET).tolist(), "count": counts.tolist()}


def _sparse_from_json(d: dict[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray(d["dim"], np.int64) * _STRIDE + np.asarray(d["key"], np.int64) + _OFFSET
    order = np.argsort(keys, kind="stable")
    return keys[order], np.asarray(d["count"], np.int64)[order]


def merge_partials(partials: Iterable[dict[str, Any] | RunningStats]) -> RunningStats:
    """Merge partials (dicts from ``to_dict`` or ``RunningStats``) into one ``RunningStats``."""
    merged: RunningStats | None = None
    for part in partials:
        stats = part if isinstance(part, RunningStats) else RunningStats.from_dict(part)
        merged = RunningStats(stats.alpha, stats.zero_threshold).merge(stats) if merged is None else merged.merge(stats)
    return merged if merged is not None else RunningStats()


def write_partial_stats(out: str | Path, index: int, stats: RunningStats) -> Path:
    """Write shard ``index``'s partial to ``OUT/shards/shard-NNNNNN.stats.bin`` (before its manifest)."""
    path = shard_stats(out, index)
    atomic_write_bytes(path, partial_bytes(stats))
    return path


def read_partial_stats(out: str | Path, index: int) -> RunningStats | None:
    """Shard ``index``'s partial (binary, or the JSON of older stores), or ``None`` when there is none."""
    for path in (shard_stats(out, index), shard_stats_json(out, index)):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if data.startswith(_MAGIC):
            return partial_from_bytes(data, path)
        return RunningStats.from_dict(json.loads(data.decode("utf-8")))
    return None


def partial_bytes(stats: RunningStats) -> bytes:
    """``_MAGIC``, a little-endian uint32 header length, a JSON header (alpha, zero_threshold, per field: name,
    dim, count and sketch sizes), then per field the little-endian arrays of ``_BODY`` (no pickle)."""
    fields, body = [], []
    for name in sorted(stats.fields):
        s = stats.fields[name]
        fields.append({"name": name, "dim": s.dim, "count": s.count, "pos": len(s.pos[0]), "neg": len(s.neg[0])})
        body += [np.ascontiguousarray(a, dtype) for a, dtype in zip(
            (s.mean, s.m2, s.min, s.max, s.zero, *s.pos, *s.neg), _BODY)]
    header = json.dumps({"version": PARTIAL_VERSION, "alpha": stats.alpha, "zero_threshold": stats.zero_threshold,
                         "fields": fields}, separators=(",", ":")).encode("utf-8")
    header += b" " * (-(len(_MAGIC) + 4 + len(header)) % 8)  # arrays start 8-byte aligned
    return b"".join([_MAGIC, len(header).to_bytes(4, "little"), header] + [a.tobytes() for a in body])


def partial_from_bytes(data: bytes, path: Path | str = "partial") -> RunningStats:
    """Inverse of :func:`partial_bytes`; arrays are read-only views of ``data``."""
    try:
        size = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 4], "little")
        start = len(_MAGIC) + 4
        head = json.loads(data[start:start + size].decode("utf-8"))
        stats, offset = RunningStats(head["alpha"], head["zero_threshold"]), start + size
        for f in head["fields"]:
            lengths = (f["dim"],) * 5 + (f["pos"],) * 2 + (f["neg"],) * 2
            arrays = []
            for dtype, n in zip(_BODY, lengths):
                arrays.append(np.frombuffer(data, dtype, n, offset))
                offset += 8 * n
            stats.fields[f["name"]] = _FieldStats(int(f["count"]), *arrays[:5], (arrays[5], arrays[6]),
                                                  (arrays[7], arrays[8]))
    except (ValueError, KeyError, TypeError) as err:
        raise StoreError(f"partial stats {path} is damaged ({err}); delete the shard's manifest to rebuild it") from err
    if head.get("version") != PARTIAL_VERSION or offset != len(data):
        raise StoreError(f"partial stats {path}: version {head.get('version')}, {len(data) - offset} bytes left over "
                         "(truncated or not a motiondata partial); delete the shard's manifest to rebuild it")
    return stats


def write_stats(out: str | Path, stats: RunningStats | dict[str, Any]) -> Path:
    """Write ``OUT/stats.json`` in openpi's format from a ``RunningStats`` or a ``norm_stats()`` dict."""
    doc = stats.norm_stats() if isinstance(stats, RunningStats) else stats
    problems = norm_stats_problems(doc)
    if problems:
        raise StoreError("stats not in openpi norm_stats format: " + "; ".join(problems))
    path = stats_file(out)
    atomic_write_text(path, json.dumps(doc, sort_keys=True, indent=1, allow_nan=False) + "\n")
    return path


def norm_stats_problems(doc: Any) -> list[str]:
    """Why ``doc`` is not ``{"norm_stats": {name: {"mean","std","q01","q99": [float] * D}}}`` (empty when it is)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("norm_stats"), dict):
        return ["top level must be {'norm_stats': {field: {...}}}"]
    problems = []
    for name, entry in doc["norm_stats"].items():
        if not isinstance(entry, dict) or any(k not in entry for k in ("mean", "std", "q01", "q99")):
            problems.append(f"{name}: needs 'mean', 'std', 'q01', 'q99'")
            continue
        lists = [entry[k] for k in ("mean", "std", "q01", "q99")]
        if not all(isinstance(v, list) and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v) for v in lists):
            problems.append(f"{name}: every statistic must be a list of finite numbers")
        elif len({len(v) for v in lists}) != 1:
            problems.append(f"{name}: statistics have different lengths {[len(v) for v in lists]}")
    return problems


def load_norm_stats(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read a ``norm_stats.json`` / ``stats.json`` (a file or a store folder) into
    ``{field: {"mean", "std", "q01", "q99": float64 array (D,)}}``."""
    path = Path(path)
    if path.is_dir():
        path = stats_file(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"cannot read norm stats {path}: {err}; compute them with write_stats()") from err
    problems = norm_stats_problems(doc)
    if problems:
        raise StoreError(f"{path}: " + "; ".join(problems))
    return {name: {k: np.asarray(v, dtype=np.float64) for k, v in entry.items() if k in ("mean", "std", "q01", "q99")}
            for name, entry in doc["norm_stats"].items()}
