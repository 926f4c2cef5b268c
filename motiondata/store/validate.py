"""Check a whole store: manifests against their schemas, shards against their manifests, every sample
against ``schemas/sample.schema.json``, the Zarr episodes, ``stats.json`` and ``errors.jsonl``.

``validate_store(out)`` returns a list of problems (empty when the store is sound). Each problem names
where it is: ``shard shard-000003, key ep_7_w0002: ...``, ``manifest.json: ...``, ``episodes.zarr/ep_7: ...``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import zarr

from motiondata.errors import StoreError
from motiondata.store.episodes_zarr import list_episodes, open_episode
from motiondata.store.errors_log import read_errors
from motiondata.store.layout import SHARDS_DIR, shard_name, shard_tar, stats_file, zarr_store
from motiondata.store.manifest import (check_job_manifest, check_shard_manifest, read_job_manifest,
                                       read_shard_manifest, schema_problems)
from motiondata.store.sample_codec import decode_value
from motiondata.store.shards import describe_sample, file_sha256, iter_members, sample_digest
from motiondata.store.stats import norm_stats_problems

log = logging.getLogger(__name__)

SHARD_FILE = re.compile(r"^shard-(\d+)\.tar$")


def _at(shard: str | None = None, key: str | None = None) -> str:
    parts = [p for p in (f"shard {shard}" if shard else "", f"key {key}" if key else "") if p]
    return ", ".join(parts)


def _grouped(path: Path) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """(key, [(field, ext, raw)]) per sample, adjacent members grouped (non-adjacent ones show up as a
    repeated key, which the key comparison reports)."""
    key, members = None, []
    for k, name, ext, data in iter_members(path):
        if k != key and key is not None:
            yield key, members
            members = []
        key = k
        members.append((name, ext, data))
    if key is not None:
        yield key, members


def _check_sample(shard: str, key: str, members: list, entry: dict | None) -> list[str]:
    where = _at(shard, key)
    if entry is None:
        return [f"{where}: sample is not listed in the shard manifest"]
    problems = []
    if "sha256" in entry and sample_digest((f"{key}.{n}.{e}", d) for n, e, d in members) != entry["sha256"]:
        problems.append(f"{where}: sample bytes differ from the manifest's sha256 (corrupted); rewrite the shard")
    try:
        sample = {name: decode_value(ext, data) for name, ext, data in members}
    except (ValueError, StoreError) as err:
        return problems + [f"{where}: undecodable member ({err}); rewrite the shard"]
    doc = {"__key__": key, **describe_sample(sample, json_values=True)}
    problems += [f"{where}: sample schema: {p}" for p in schema_problems("sample", doc)]
    meta = sample.get("meta")
    if isinstance(meta, dict) and (meta.get("episode"), meta.get("window")) != (entry["episode"], entry["window"]):
        problems.append(f"{where}: meta says episode {meta.get('episode')!r} window {meta.get('window')!r}, the "
                        f"manifest {entry['episode']!r} window {entry['window']!r}")
    return problems


def _check_members(shard: str, path: Path, manifest: dict[str, Any]) -> list[str]:
    entries = {s["key"]: s for s in manifest["samples"]}
    problems, keys = [], []
    try:
        for key, members in _grouped(path):
            keys.append(key)
            problems += _check_sample(shard, key, members, entries.get(key))
    except StoreError as err:
        return problems + [str(err)]
    if keys != manifest["keys"]:
        missing = [k for k in manifest["keys"] if k not in set(keys)]
        detail = f"missing {missing[:5]}" if missing else "order differs or a key repeats"
        problems.append(f"{_at(shard)}: tar holds {len(keys)} samples, manifest lists {len(manifest['keys'])} "
                        f"({detail})")
    return problems


def _check_tar(out: Path, index: int, manifest: dict[str, Any], deep: bool) -> list[str]:
    shard, path = shard_name(index), shard_tar(out, index)
    if not path.is_file():
        return [f"{_at(shard)}: tar {path} is missing; rerun the job to rewrite it"]
    size = path.stat().st_size
    problems = []
    if size != manifest["bytes"]:
        problems.append(f"{_at(shard)}: tar has {size} bytes, manifest says {manifest['bytes']} (truncated or "
                        "rewritten); delete the shard's .json and rerun the job")
    if deep:
        if file_sha256(path) != manifest["sha256"]:
            problems.append(f"{_at(shard)}: sha256 differs from the manifest (corrupted); rewrite the shard")
        problems += _check_members(shard, path, manifest)
    return problems


def check_shard(out: str | Path, index: int, deep: bool = True, listed: dict | None = None) -> list[str]:
    """Problems of one shard: manifest, agreement with the job manifest's entry, tar and samples."""
    out, shard = Path(out), shard_name(index)
    try:
        manifest = read_shard_manifest(out, index)
    except StoreError as err:
        return [f"{_at(shard)}: {err}"]
    if manifest is None:
        return [f"{_at(shard)}: manifest {SHARDS_DIR}/{shard}.json is missing (shard not done); rerun the job"]
    problems = [f"{_at(shard)}: manifest: {p}" for p in check_shard_manifest(manifest)]
    if problems:
        return problems
    for field in ("num_samples", "sha256"):
        if listed is not None and listed.get(field) != manifest[field]:
            problems.append(f"{_at(shard)}: manifest.json lists {field} {listed.get(field)!r}, the shard "
                            f"manifest {manifest[field]!r}")
    return problems + _check_tar(out, index, manifest, deep)


def _shard_indices_on_disk(out: Path) -> list[int]:
    folder = out / SHARDS_DIR
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := SHARD_FILE.match(p.name)))


def _check_job(out: Path, deep: bool) -> tuple[list[str], list[int], dict | None]:
    """Problems of the job manifest and of every shard it lists; returns (problems, indices, manifest)."""
    try:
        job = read_job_manifest(out)
    except StoreError as err:
        return [f"manifest.json: {err}"], _shard_indices_on_disk(out), None
    if job is None:
        return [f"manifest.json: missing in {out} (job not finished, or not a store)"], _shard_indices_on_disk(out), None
    problems = [f"manifest.json: {p}" for p in check_job_manifest(job)]
    if schema_problems("job_manifest", job):
        return problems, _shard_indices_on_disk(out), None
    indices = list(range(len(job["shards"])))
    for index, entry in zip(indices, job["shards"]):
        problems += check_shard(out, index, deep, listed=entry)
    stray = sorted(set(_shard_indices_on_disk(out)) - set(indices))
    problems += [f"{_at(shard_name(i))}: tar on disk but not listed in manifest.json; delete it or rerun" for i in stray]
    return problems, indices, job


def _check_zarr(out: Path, episodes: set[str]) -> list[str]:
    if not zarr_store(out).exists():
        return []
    try:
        zarr.open_group(str(zarr_store(out)), mode="r", zarr_format=3)
    except Exception as err:  # zarr raises many types for a broken store
        return [f"episodes.zarr: cannot open ({type(err).__name__}: {err})"]
    problems, stored = [], list_episodes(out)
    for eid in stored:
        try:
            group = open_episode(out, eid)
            problems += [f"episodes.zarr/{eid}: attrs: {p}" for p in schema_problems("episode", dict(group.attrs))]
            for name, info in dict(group.attrs).get("motiondata", {}).get("fields", {}).items():
                node = group[name.replace(".", "/")]
                if list(node.shape) != info["shape"] or node.dtype.name != info["dtype"]:
                    problems.append(f"episodes.zarr/{eid}: array {name} is {node.dtype} {node.shape}, attrs say {info}")
        except Exception as err:  # a corrupt group can fail in zarr in many ways
            problems.append(f"episodes.zarr/{eid}: unreadable ({type(err).__name__}: {err})")
    missing = sorted(episodes - set(stored))
    if stored and missing:
        problems.append(f"episodes.zarr: {len(missing)} episodes of the shards are missing, e.g. {missing[:5]}")
    return problems


def _check_stats(out: Path) -> list[str]:
    path = stats_file(out)
    if not path.is_file():
        return ["stats.json: missing; write it with motiondata.store.stats.write_stats"]
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        return [f"stats.json: not JSON ({err})"]
    return [f"stats.json: {p}" for p in norm_stats_problems(doc)]


def _check_errors(out: Path, job: dict | None) -> list[str]:
    try:
        records = read_errors(out)
    except StoreError as err:
        return [f"errors.jsonl: {err}"]
    if job is not None and job.get("num_errors") != len(records):
        return [f"manifest.json: num_errors {job.get('num_errors')} but errors.jsonl holds {len(records)} records"]
    return []


def validate_store(out: str | Path, deep: bool = True) -> list[str]:
    """Every problem of the store at ``out`` (empty list: sound). ``deep=False`` skips hashing and
    decoding the shards (sizes, manifests and schemas are still checked)."""
    out = Path(out)
    problems, indices, job = _check_job(out, deep)
    if job is None:
        for index in indices:
            problems += check_shard(out, index, deep)
    episodes: set[str] = set()
    for index in indices:
        try:
            manifest = read_shard_manifest(out, index)
        except StoreError:
            continue
        if manifest and isinstance(manifest.get("episodes"), list):
            episodes.update(map(str, manifest["episodes"]))
    problems += _check_zarr(out, episodes) + _check_stats(out) + _check_errors(out, job)
    for p in problems:
        log.info("store problem: %s", p)
    return problems
