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


def summarize(out: str | Path, episode: str | None = None) -> dict[str, Any]:
    out = Path(out)
    job = _job(out)
    episodes: dict[str, dict[str, Any]] = {}
    fields: dict[str, Any] = {}
    for entry in job["shards"]:
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
