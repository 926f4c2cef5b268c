"""Summaries of a built store: episodes, windows, fields (shapes, dtypes), stats, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from motiondata.errors import StoreError
from motiondata.store import layout
from motiondata.store.manifest import read_job_manifest, read_shard_manifest


def _job(out: Path) -> dict[str, Any]:
    job = read_job_manifest(out)
    if not job:
        raise StoreError(f"{out} has no {layout.JOB_MANIFEST}; build it with `motiondata build SPEC --out {out}`")
    return job


def _spread(entries: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """At most ``limit`` entries, evenly spaced from the first to the last (all when ``limit`` is None)."""
    if limit is None or len(entries) <= limit:
        return entries
    step = (len(entries) - 1) / (limit - 1)
    return [entries[round(i * step)] for i in range(limit)]


def summarize(out: str | Path, episode: str | None = None, max_shards: int | None = None) -> dict[str, Any]:
    """The store's summary from every shard manifest, or (``max_shards``: the build report of a large store)
    from that many evenly spaced ones; counts always come from the job manifest."""
    out = Path(out)
    job = _job(out)
    episodes: dict[str, dict[str, Any]] = {}
    fields: dict[str, Any] = {}
    read = _spread(job["shards"], max_shards)
    for entry in read:
        manifest = read_shard_manifest(out, int(entry["shard"].split("-")[1])) or {}
        for name, desc in manifest.get("fields", {}).items():
            fields.setdefault(name, desc)
        for rec in manifest.get("samples", []):
            ep = episodes.setdefault(rec["episode"], {"windows": 0, "shard": entry["shard"], "keys": []})
            ep["windows"] += 1
            ep["keys"].append(rec["key"])
    errors = [json.loads(line) for line in layout.errors_file(out).read_text().splitlines() if line.strip()] \
        if layout.errors_file(out).exists() else []
    stats = json.loads(layout.stats_file(out).read_text()) if layout.stats_file(out).exists() else {}
    summary = {
        "store": str(out), "name": job.get("name"), "episodes": sorted(episodes), "samples": job["num_samples"],
        "num_episodes": len(episodes) if len(read) == len(job["shards"]) else job.get("num_episodes", len(episodes)),
        "shards_read": len(read),
        "shards": len(job["shards"]), "errors": len(errors), "fields": fields,
        "stages": job.get("stages", []), "stats": stats.get("norm_stats", {}), "error_records": errors,
        "windows_per_episode": {k: v["windows"] for k, v in sorted(episodes.items())},
    }
    if episode is not None:
        if episode not in episodes:
            raise StoreError(f"episode {episode!r} not in {out}; `motiondata inspect {out}` lists the ids")
        summary["episode"] = _episode_detail(out, episode, episodes[episode])
    return summary


def _episode_detail(out: Path, episode: str, info: dict[str, Any]) -> dict[str, Any]:
    from motiondata.store.episodes_zarr import read_episode

    arrays = read_episode(out, episode)
    detail = {"id": episode, "shard": info["shard"], "windows": info["windows"], "keys": info["keys"]}
    detail["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()
                        if hasattr(v, "shape")}
    detail["attrs"] = {k: v for k, v in arrays.items() if not hasattr(v, "shape")}
    return detail


INTERNAL_SUFFIXES = ("_len", "_shapes")


def _preview(name: str, value: Any) -> str:
    """A few values of an array: first token ids, per-dimension ranges of vectors, value range otherwise."""
    import numpy as np

    arr = np.asarray(value)
    if arr.size == 0:
        return "(empty)"
    if name.endswith(".tokens") or arr.dtype.kind in "iu" and arr.ndim <= 2 and "codes" not in name:
        first = arr[0] if arr.ndim > 1 else arr
        label = "first ids " if name.endswith(".tokens") else "first values "
        return label + " ".join(str(int(v)) for v in first.reshape(-1)[:10])
    if arr.ndim == 2 and arr.shape[1] <= 32 and arr.dtype.kind == "f":
        lo, hi = np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
        return "ranges " + " ".join(f"[{a:.2f},{b:.2f}]" for a, b in zip(lo[:6], hi[:6])) + (
            " ..." if arr.shape[1] > 6 else "")
    data = arr.astype(np.float64) if arr.dtype.kind in "fiub" else None
    return "-" if data is None else f"min {np.nanmin(data):.3g} max {np.nanmax(data):.3g} mean {np.nanmean(data):.3g}"


def episode_summary(out: str | Path, episode: str) -> dict[str, Any]:
    """One episode only: its attrs (language, fps, source file, length, anchors or window starts, tasks),
    its real fields (internal ``_len``/``_shapes`` arrays left out) with shape, dtype, axis and a preview."""
    from motiondata.store.episodes_zarr import list_episodes, open_episode
    import zarr

    out = Path(out)
    _job(out)
    if episode not in list_episodes(out):
        raise StoreError(f"episode {episode!r} not in {out}; `motiondata inspect {out}` lists the ids")
    group = open_episode(out, episode)
    attrs = dict(group.attrs)
    tables = attrs.get("tables") if isinstance(attrs.get("tables"), dict) else {}
    fields = {}
    for path, node in sorted(group.members(max_depth=None)):
        name = path.replace("/", ".")
        if not isinstance(node, zarr.Array) or name.endswith(INTERNAL_SUFFIXES):
            continue
        info = tables.get(name, {})
        fields[name] = {"shape": list(node.shape), "dtype": str(node.dtype),
                        "axis": info.get("axis", "window" if name.startswith("windows.") else "frame"),
                        "preview": _preview(name, node[: min(node.shape[0], 64)] if node.ndim else node[...])}
    meta = attrs.get("metadata") if isinstance(attrs.get("metadata"), dict) else {}
    windows = attrs.get("windows")
    detail = {"id": episode, "source": attrs.get("source"), "language": attrs.get("language"),
              "fps": attrs.get("fps"), "length": attrs.get("length"), "file": meta.get("file"),
              "tasks": attrs.get("tasks", meta.get("tasks")), "cameras": attrs.get("cameras"),
              "anchors": attrs.get("anchors"),
              "window_starts": [w[0] for w in windows] if isinstance(windows, list) else None,
              "metadata": meta, "fields": fields}
    return detail
