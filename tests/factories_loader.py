"""Tiny stores for loader / random-access / trainer tests, with the real field names and small shapes.

``make_store(out)`` writes OUT/shards/shard-NNNNNN.{tar,json}, OUT/manifest.json and OUT/episodes.zarr
the way a build does, through the store's own writers (``write_shard``, ``write_shard_manifest``,
``write_job_manifest``, ``write_episode``). Targets are functions of the inputs (``motion.zm`` is the
H/W-pooled latent difference, keyframe codes quantise the latents, FAST tokens follow the latent mean),
so a model can learn them and its loss falls.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from motiondata.store import layout

C, T_LAT, H_LAT, W_LAT = 4, 2, 4, 4
WINDOW, ACTION_DIM, TEXT_DIM = 8, 7, 16
FLOW_POINTS, FLOW_STEPS = 400, 4
KEYFRAMES, CODES, FAST_VOCAB = 2, 16, 32
ALL_FIELDS = ("vae.latents", "motion.zm", "motion.pool_h", "motion.pool_w", "flow.tracks", "flow.valid",
              "flow.query", "fast.tokens", "fast.chunk_mask", "keyframes.codes", "keyframes.index",
              "text.embedding", "actions", "state", "meta")


def episode_id(e: int) -> str:
    return f"ep{e:03d}"


def sample_key(e: int, w: int) -> str:
    return f"{episode_id(e)}_w{w:04d}"


def _motion(latents: np.ndarray) -> dict[str, np.ndarray]:
    diff = np.diff(latents.astype(np.float32), axis=1)
    pool_h, pool_w = diff.mean(axis=2), diff.mean(axis=3)  # (C, T'-1, W'), (C, T'-1, H')
    zm = np.concatenate([pool_h, pool_w], axis=-1)
    return {"motion.pool_h": pool_h.astype(np.float16), "motion.pool_w": pool_w.astype(np.float16),
            "motion.zm": zm.astype(np.float16)}


def _flow(rng: np.random.Generator, latents: np.ndarray) -> dict[str, Any]:
    base = np.tanh(latents[:2].astype(np.float32).mean(axis=(1, 2, 3)))  # (2,) learnable drift
    tracks = np.zeros((FLOW_POINTS, FLOW_STEPS, 3), dtype=np.float32)
    tracks[..., 0], tracks[..., 1] = base[0] * 0.5, base[1] * 0.5
    tracks += 0.01 * rng.standard_normal(tracks.shape).astype(np.float32)
    valid = (rng.random((FLOW_POINTS, FLOW_STEPS)) > 0.2).astype(np.uint8)
    return {"flow.tracks": tracks.astype(np.float16), "flow.valid": valid, "flow.query": 0}


def make_sample(e: int, w: int, rng: np.random.Generator, text: np.ndarray, actions: np.ndarray) -> dict[str, Any]:
    """One window sample with every field of the contract (small shapes)."""
    latents = rng.standard_normal((C, T_LAT, H_LAT, W_LAT)).astype(np.float16)
    codes = np.clip((latents[0, :KEYFRAMES].astype(np.float32) + 2.0) * CODES / 4.0, 0, CODES - 1).astype(np.int32)
    n_tokens = int(rng.integers(3, 10))
    first = int(np.clip((latents[0].astype(np.float32).mean() + 1.0) * FAST_VOCAB / 2, 1, FAST_VOCAB - 1))
    tokens = ((first + np.arange(n_tokens)) % FAST_VOCAB).astype(np.int32)
    start = w * WINDOW // 2
    sample = {
        "__key__": sample_key(e, w),
        "vae.latents": latents,
        "fast.tokens": tokens,
        "fast.chunk_mask": np.ones(WINDOW, dtype=np.uint8),
        "keyframes.codes": codes,
        "keyframes.index": np.array([start, start + WINDOW // 2], dtype=np.int32),
        "text.embedding": text,
        "actions": actions[start:start + WINDOW],
        "state": actions[start:start + WINDOW] * 0.5,
        "meta": {"episode": episode_id(e), "source": "factory", "window": w, "start": start, "length": WINDOW,
                 "fps": 10.0, "language": f"task {e}", "frame_index": list(range(start, start + WINDOW))},
    }
    sample.update(_motion(latents))
    sample.update(_flow(rng, latents))
    return sample


def make_samples(episodes: int = 3, windows: int = 4, seed: int = 0) -> tuple[list[dict], dict[str, dict]]:
    """All window samples, and per-episode data ``{episode_id: {"actions", "state", "samples"}}``."""
    rng = np.random.default_rng(seed)
    samples, per_episode = [], {}
    for e in range(episodes):
        length = (windows + 1) * WINDOW // 2
        actions = rng.uniform(-1, 1, (length, ACTION_DIM)).astype(np.float32)
        text = rng.standard_normal(TEXT_DIM).astype(np.float32)
        ep_samples = [make_sample(e, w, rng, text, actions) for w in range(windows)]
        samples.extend(ep_samples)
        per_episode[episode_id(e)] = {"actions": actions, "state": actions * 0.5, "samples": ep_samples}
    return samples, per_episode


def _write_shards(out: Path, samples: list[dict], per_shard: int) -> list[dict]:
    from motiondata.store.manifest import write_shard_manifest
    from motiondata.store.shards import write_shard

    entries = []
    for index, first in enumerate(range(0, len(samples), per_shard)):
        chunk = samples[first:first + per_shard]
        tar = layout.shard_tar(out, index)
        info = write_shard(tar, chunk)
        records = [{"key": s["__key__"], "episode": s["meta"]["episode"], "window": s["meta"]["window"],
                    "status": "ok"} for s in chunk]
        write_shard_manifest(out, index, {
            "tar": tar.name, "sha256": info["sha256"], "bytes": info["bytes"], "num_samples": info["num_samples"],
            "keys": [s["__key__"] for s in chunk], "samples": records, "fields": info["fields"],
            "episodes": sorted({r["episode"] for r in records}), "units": [], "errors": [], "spec_hash": "factory"})
        entries.append({"shard": layout.shard_name(index), "tar": f"{layout.SHARDS_DIR}/{tar.name}",
                        "num_samples": info["num_samples"], "sha256": info["sha256"]})
    return entries


def _write_job_manifest(out: Path, entries: list[dict], episodes: int) -> None:
    from motiondata.store.manifest import write_job_manifest

    write_job_manifest(out, {
        "name": "factory", "spec": {"name": "factory"}, "spec_hash": "factory", "software": {}, "stages": [],
        "shards": entries, "num_samples": sum(e["num_samples"] for e in entries), "num_episodes": episodes,
        "num_errors": 0, "created_by": "tests/factories_loader.py"})


def _write_zarr(out: Path, per_episode: dict[str, dict]) -> None:
    """Episode groups as the pipeline writes them: per-frame arrays, per-window fields, window attrs."""
    from motiondata.store.episodes_zarr import write_episode

    for ep, data in per_episode.items():
        samples = data["samples"]
        window_fields = {f: [s[f] for s in samples] for f, v in samples[0].items()
                         if isinstance(v, np.ndarray) and f not in ("actions", "state")}
        length = len(data["actions"])
        rgb = (np.arange(length * 8 * 8 * 3) % 251).astype(np.uint8).reshape(length, 8, 8, 3)
        arrays = {"rgb.front": rgb, "actions": data["actions"], "state": data["state"]}
        attrs = {"id": ep, "source": "factory", "fps": 10.0, "language": samples[0]["meta"]["language"],
                 "length": length, "cameras": ["front"], "metadata": {},
                 "windows": [[s["meta"]["start"], s["meta"]["length"]] for s in samples]}
        write_episode(out, ep, arrays, attrs, window_fields)


def make_store(out: str | Path, *, episodes: int = 3, windows: int = 4, per_shard: int = 4, seed: int = 0,
               fields: Sequence[str] | None = None, zarr_store: bool = True) -> Path:
    """Write a tiny complete store at ``out``; ``fields`` keeps only those fields (plus ``meta``)."""
    out = Path(out)
    samples, per_episode = make_samples(episodes, windows, seed)
    keep = set(fields or ALL_FIELDS) | {"meta"}
    samples = [{k: v for k, v in s.items() if k == "__key__" or k in keep} for s in samples]
    for data in per_episode.values():
        data["samples"] = [{k: v for k, v in s.items() if k == "__key__" or k in keep} for s in data["samples"]]
    entries = _write_shards(out, samples, per_shard)
    _write_job_manifest(out, entries, episodes)
    if zarr_store:
        _write_zarr(out, per_episode)
    return out


def store_keys(out: str | Path) -> list[str]:
    """Every sample key of a store, in shard order."""
    manifest = json.loads(layout.job_manifest(out).read_text())
    keys = []
    for index in range(len(manifest["shards"])):
        keys.extend(json.loads(layout.shard_manifest(out, index).read_text())["keys"])
    return keys


def corrupt_shard(out: str | Path, index: int, how: str = "truncate") -> None:
    """Damage one shard: ``truncate`` cuts it mid-member, ``garbage`` overwrites the second sample's
    header, ``npy`` replaces one member's payload with bytes that are not a .npy."""
    path = layout.shard_tar(out, index)
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
        return
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    if how == "garbage":
        second = next(m for m in members if not m.name.startswith(members[0].name.split(".")[0] + "."))
        data[second.offset: second.offset + 512] = b"\xff" * 512
    elif how == "npy":
        target = next(m for m in members if m.name.endswith("vae.latents.npy"))
        data[target.offset_data: target.offset_data + 16] = b"not-a-npy-header"
    else:
        raise ValueError(f"unknown corruption {how!r}: use truncate, garbage or npy")
    path.write_bytes(bytes(data))
