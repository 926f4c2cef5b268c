"""Tiny samples and whole tiny stores, built with the store primitives only (no pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from motiondata.store.episodes_zarr import write_episode
from motiondata.store.errors_log import error_record, write_errors
from motiondata.store.layout import SHARDS_DIR, shard_name, shard_tar
from motiondata.store.manifest import software_versions, write_job_manifest, write_shard_manifest
from motiondata.store.shards import write_shard
from motiondata.store.stats import RunningStats, write_partial_stats, write_stats, merge_partials

LENGTH = 4


def make_sample(episode: str, window: int, seed: int = 0, length: int = LENGTH) -> dict[str, Any]:
    """One sample with the contract's field names and dtypes (tiny shapes)."""
    rng = np.random.default_rng(seed * 1000 + window)
    n_tokens = 3 + window % 3  # variable length across samples
    return {
        "__key__": f"{episode}_w{window:04d}",
        "meta": {"episode": episode, "source": f"{episode}.hdf5", "window": window, "start": window * 2,
                 "length": length, "fps": 10.0, "language": "pick up the cube", "frame_index": window * 2},
        "rgb.agentview": rng.integers(0, 255, (length, 8, 8, 3), dtype=np.uint8),
        "actions": rng.normal(size=(length, 7)).astype(np.float32),
        "state": rng.normal(size=(length, 9)).astype(np.float32),
        "fast.tokens": rng.integers(0, 1024, n_tokens).astype(np.int32),
        "motion.zm": rng.normal(size=(4, 1, 6)).astype(np.float16),
        "flow.tracks": rng.normal(size=(400, 2, 3)).astype(np.float16),
        "flow.valid": np.ones((400, 2), np.uint8),
    }


def episode_samples(episode: str, windows: int, seed: int = 0) -> list[dict[str, Any]]:
    return [make_sample(episode, w, seed) for w in range(windows)]


def shard_manifest_for(index: int, info: dict[str, Any], samples: list[dict[str, Any]], errors=()) -> dict:
    """The manifest the pipeline would write for a shard holding ``samples``."""
    episodes = sorted({s["meta"]["episode"] for s in samples})
    return {
        "shard": shard_name(index), "index": index, "tar": f"{SHARDS_DIR}/{shard_name(index)}.tar",
        "sha256": info["sha256"], "bytes": info["bytes"], "num_samples": info["num_samples"],
        "keys": [s["__key__"] for s in samples],
        "samples": [{"key": s["__key__"], "episode": s["meta"]["episode"], "window": s["meta"]["window"],
                     "status": "ok", "bytes": i["bytes"], "sha256": i["sha256"]}
                    for s, i in zip(samples, info["samples"])],
        "fields": info["fields"], "episodes": episodes, "units": [f"{e}.hdf5" for e in episodes],
        "errors": list(errors), "spec_hash": "abc123",
    }


def build_store(out: str | Path, shards: int = 2, episodes_per_shard: int = 2, windows: int = 3) -> dict:
    """A complete tiny store: shards + manifests + partial and merged stats + zarr + errors + job manifest."""
    out = Path(out)
    entries, partials, all_samples, n_episodes = [], [], [], 0
    errors = [error_record("bad.hdf5", "bad_demo_0", "read", "truncated HDF5 dataset 'actions'", unit="bad.hdf5")]
    for index in range(shards):
        samples = []
        for e in range(episodes_per_shard):
            eid = f"ep_{index}_{e}"
            ep_samples = episode_samples(eid, windows, seed=index * 10 + e)
            samples += ep_samples
            write_episode(out, eid, {"actions": np.concatenate([s["actions"] for s in ep_samples])},
                          {"source": f"{eid}.hdf5", "fps": 10.0},
                          {"fast.tokens": [s["fast.tokens"] for s in ep_samples]})
            n_episodes += 1
        info = write_shard(shard_tar(out, index), samples)
        stats = RunningStats()
        for s in samples:
            stats.update("actions", s["actions"])
            stats.update("state", s["state"])
        write_partial_stats(out, index, stats)
        partials.append(stats)
        write_shard_manifest(out, index, shard_manifest_for(index, info, samples, errors if index == 0 else ()))
        entries.append({"shard": shard_name(index), "tar": f"{SHARDS_DIR}/{shard_name(index)}.tar",
                        "num_samples": info["num_samples"], "sha256": info["sha256"]})
        all_samples += samples
    write_stats(out, merge_partials(partials))
    write_errors(out, errors)
    write_job_manifest(out, {
        "name": "tiny", "spec": {"name": "tiny", "stages": [{"name": "fast"}]}, "spec_hash": "abc123",
        "software": software_versions(), "stages": [{"name": "fast", "config_hash": "0123456789abcdef"}],
        "shards": entries, "num_samples": len(all_samples), "num_episodes": n_episodes,
        "num_errors": len(errors), "created_by": "tests/factories_store.py"})
    return {"out": out, "samples": all_samples, "entries": entries}
