"""Fit a FAST tokenizer on a dataset's actions and report how well it compresses and reconstructs them.

Inputs: a store directory (``episodes.zarr/<episode>/<field>`` + ``stats.json``), an HDF5 file or folder
(LIBERO / robomimic layout, via ``motiondata.sources`` when available), or a list of Episodes / arrays.
The output directory gets the tokenizer (reference layout), ``norm_stats.json`` (the normalisation the
tokens assume; the FAST stage reads it by default) and ``fit_report.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy.fft import idct

from motiondata.errors import MotionDataError, SpecError
from motiondata.store.layout import atomic_write_text, stats_file, zarr_store
from motiondata.tokenize.chunking import ChunkSpec
from motiondata.tokenize.fast import NORM_STATS, FastTokenizer
from motiondata.tokenize.normalize import NormStats, QuantileNormalize, compute_norm_stats, load_norm_stats, \
    save_norm_stats
from motiondata.tokenize.universal import UniversalMapping

log = logging.getLogger(__name__)
FIT_REPORT = "fit_report.json"
HDF5_SUFFIXES = (".hdf5", ".h5", ".he5")


class FitError(MotionDataError, ValueError):
    """The fit input could not be read or holds no actions."""


@dataclass(frozen=True)
class FitInput:
    """Per-episode vector fields plus the stats that came with them (store ``stats.json``), if any."""

    episodes: list[dict[str, np.ndarray]]
    stats: dict[str, NormStats] | None
    origin: str


def quantization_bound(scale: float, horizon: int) -> float:
    """Largest possible per-value reconstruction error from rounding alone.

    Each coefficient's rounding error is at most ``0.5 / scale``; the orthonormal inverse DCT sums them
    with weights ``C[k, t]``, so ``|err_t| <= 0.5/scale * sum_k |C[k, t]|`` (attained for a sign pattern).
    Since each column of the orthonormal matrix has unit L2 norm, ``sum_k |C[k, t]| <= sqrt(T)`` (Cauchy-
    Schwarz), hence the looser ``0.5 / scale * sqrt(T)``. Per dimension, the L2 error over time is also
    ``<= 0.5/scale * sqrt(T)`` (Parseval)."""
    basis = idct(np.eye(horizon), axis=0, norm="ortho")  # basis[t, k] = C[k, t]
    return float(0.5 / scale * np.abs(basis).sum(axis=1).max())


# ------------------------------------------------------------------ inputs
def read_store(store_dir: str | Path) -> FitInput:
    """Vector fields of every episode in ``DIR/episodes.zarr`` (plain zarr) and ``DIR/stats.json``."""
    import zarr

    root_path = zarr_store(store_dir)
    if not root_path.is_dir():
        raise FitError(f"{store_dir}: no {root_path.name}/. Fix: point to a store built by motiondata build")
    episodes = []
    names = sorted(p.name for p in root_path.iterdir()  # hidden names are groups still being written
                   if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").is_file())
    for name in names:
        group = zarr.open_group(str(root_path / name), mode="r")
        episodes.append({key: np.asarray(group[key][:]) for key in sorted(group.array_keys())
                         if group[key].ndim == 2})
    stats = load_norm_stats(stats_file(store_dir)) if stats_file(store_dir).is_file() else None
    return FitInput(episodes, stats, str(store_dir))


def _hdf5_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in HDF5_SUFFIXES)
    if not files:
        raise FitError(f"{path}: no .hdf5 files. Fix: point to an HDF5 file or a folder of them")
    return files


def _demo_order(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 30, name)


def _hdf5_source(path: str | Path) -> Any:
    """The project's HDF5 reader, or None while it is not available (then h5py reads the layout)."""
    try:
        from motiondata.sources import open_source  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        return open_source("hdf5", str(path))
    except SpecError:
        return None


def read_hdf5(path: str | Path) -> FitInput:
    """Actions of every demo: through ``motiondata.sources.open_source("hdf5", ...)`` when that reader
    exists, else straight from the LIBERO / robomimic layout ``data/demo_<i>/actions`` with h5py."""
    source = _hdf5_source(path)
    if source is not None:
        try:
            episodes = [source.read(unit).vectors() for unit in source.units() if not unit.get("error")]
            return FitInput(episodes, None, str(path))
        except MotionDataError as exc:
            log.warning("%s: the hdf5 source failed (%s); reading data/demo_*/actions with h5py", path, exc)
    import h5py

    episodes = []
    for file in _hdf5_files(Path(path)):
        with h5py.File(file, "r") as h5:
            if "data" not in h5:
                raise FitError(f"{file}: no data/ group. Fix: expected the LIBERO/robomimic layout data/demo_<i>/")
            for demo in sorted(h5["data"], key=_demo_order):
                if "actions" in h5["data"][demo]:
                    episodes.append({"actions": np.asarray(h5["data"][demo]["actions"][:], np.float32)})
    return FitInput(episodes, None, str(path))


def as_fit_input(source: Any) -> FitInput:
    """A store dir, an HDF5 path, a :class:`FitInput`, or a sequence of Episodes / ``(T, D)`` arrays."""
    if isinstance(source, FitInput):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if zarr_store(path).is_dir():
            return read_store(path)
        if path.suffix.lower() in HDF5_SUFFIXES or path.is_dir():
            return read_hdf5(path)
        raise FitError(f"{source}: neither a store (no episodes.zarr/) nor an HDF5 file. Fix: pass one of them")
    episodes = [item.vectors() if hasattr(item, "vectors") else {"actions": np.asarray(item)} for item in source]
    return FitInput(episodes, None, f"{len(episodes)} in-memory episodes")


def select_actions(data: FitInput, field: str, universal: dict | str | None) -> list[np.ndarray]:
    mapping = UniversalMapping.from_dict(universal) if universal is not None else None
    out = []
    for fields in data.episodes:
        if mapping is not None:
            out.append(mapping.to_universal(fields))
        elif fields.get(field) is not None:
            out.append(np.asarray(fields[field], np.float32))
    if not out:
        raise FitError(f"{data.origin}: no episode has a {field!r} field. Fix: pick a field the data has")
    return out


# ------------------------------------------------------------------ fit
def chunk_episodes(actions: Iterable[np.ndarray], horizon: int, stride: int = 1,
                   pad: str = "repeat") -> np.ndarray:
    """All chunks of all episodes, ``[N, horizon, D]``."""
    spec = ChunkSpec(horizon=horizon, stride=stride, pad=pad)
    return np.concatenate([spec(np.asarray(a))[0] for a in actions])


def fit_fast(chunks_source: Any, out_dir: str | Path, scale: float = 10, vocab_size: int = 1024,
             horizon: int = 10, *, stride: int = 1, field: str = "actions", stats: NormStats | None = None,
             universal: dict | str | None = None, min_frequency: int = 2, pad: str = "repeat") -> dict:
    """Fit on every chunk (start every ``stride`` steps, end-padded), save to ``out_dir``, return the report.

    Stats: ``stats`` if given, else the store's ``stats.json`` for ``field`` (not with ``universal``), else
    computed from the actions."""
    data = as_fit_input(chunks_source)
    actions = select_actions(data, field, universal)
    if stats is None and universal is None and data.stats and field in data.stats:
        stats = data.stats[field]
    stats = stats or compute_norm_stats(actions)
    normalise = QuantileNormalize.from_stats(stats, (field,))
    chunks = chunk_episodes(actions, horizon, stride, pad).astype(np.float32)
    normed = normalise.apply(chunks)
    tokenizer = FastTokenizer.fit(normed, scale=scale, vocab_size=vocab_size, min_frequency=min_frequency)
    out = tokenizer.save(out_dir)
    save_norm_stats(out / NORM_STATS, {field: stats})
    report = evaluate(tokenizer, chunks, normalise)
    report.update(out=str(out), source=data.origin, episodes=len(actions), field=field, stride=stride,
                  universal=universal, vocab_size_requested=vocab_size)
    atomic_write_text(out / FIT_REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def evaluate(tokenizer: FastTokenizer, chunks: np.ndarray, normalise: QuantileNormalize) -> dict:
    """Tokens per chunk, compression vs one token per value, and round-trip error on ``chunks`` (raw units)."""
    n, t, d = chunks.shape
    normed = normalise.apply(chunks)
    ids = tokenizer.encode(normed)
    lengths = np.array([len(i) for i in ids])
    decoded = tokenizer.decode(ids, t, d, strict=False)
    err_norm = np.abs(decoded - normed)
    err_raw = np.abs(normalise.inverse().apply(decoded) - chunks)
    return {
        "chunks": int(n), "horizon": int(t), "action_dim": int(d), "scale": tokenizer.scale,
        "vocab_size": tokenizer.bpe_vocab_size, "min_token": tokenizer.min_token, "max_token": tokenizer.max_token,
        "tokens_per_chunk": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                             "max": int(lengths.max()), "min": int(lengths.min())},
        "naive_tokens_per_chunk": int(t * d),
        "compression_ratio": float(t * d / lengths.mean()),
        "roundtrip_error": {"normalized": {"max": float(err_norm.max()), "mean": float(err_norm.mean())},
                            "raw": {"max": float(err_raw.max()), "mean": float(err_raw.mean())}},
        "quantization_bound_normalized": quantization_bound(tokenizer.scale, t),
    }


def format_report(report: dict) -> str:
    tpc, err = report["tokens_per_chunk"], report["roundtrip_error"]
    lines = [
        f"FAST tokenizer -> {report.get('out', '?')}",
        f"  data          {report.get('source', '?')}: {report.get('episodes', '?')} episodes, "
        f"{report['chunks']} chunks of {report['horizon']} x {report['action_dim']}",
        f"  vocabulary    {report['vocab_size']} ids (requested {report.get('vocab_size_requested', '?')}), "
        f"scale {report['scale']}, coefficients {report['min_token']}..{report['max_token']}",
        f"  tokens/chunk  mean {tpc['mean']:.2f}, median {tpc['median']:.1f}, max {tpc['max']}, min {tpc['min']}",
        f"  compression   {report['compression_ratio']:.2f}x vs {report['naive_tokens_per_chunk']} per-value tokens",
        f"  round trip    normalised max {err['normalized']['max']:.4g} mean {err['normalized']['mean']:.4g} "
        f"(bound {report['quantization_bound_normalized']:.4g}); raw max {err['raw']['max']:.4g} "
        f"mean {err['raw']['mean']:.4g}",
    ]
    return "\n".join(lines)


def fit_fast_cli(target: str, out: str, scale: float = 10, vocab_size: int = 1024, horizon: int = 10) -> dict:
    """``motiondata fit-fast DIR_OR_HDF5 --out tokenizers/fast/NAME``: fit, save, return the report."""
    path = Path(target)
    if not path.exists():
        raise FitError(f"{target}: does not exist. Fix: pass a store directory or an HDF5 file/folder")
    report = fit_fast(path, out, scale=scale, vocab_size=vocab_size, horizon=horizon)
    log.info("saved FAST tokenizer to %s (%d ids, %.2f tokens per chunk)", out, report["vocab_size"],
             report["tokens_per_chunk"]["mean"])
    return report


__all__ = ["fit_fast", "fit_fast_cli", "format_report", "evaluate", "quantization_bound",
                          "read_store", "read_hdf5", "as_fit_input", "chunk_episodes", "FitError"]
