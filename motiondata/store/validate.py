"""Check a whole store: manifests against their schemas, shards against their manifests, every sample
against ``schemas/sample.schema.json``, the Zarr episodes, ``stats.json`` and ``errors.jsonl``.

``validate_store(out)`` returns a list of problems (empty when the store is sound). Each problem names
where it is and the fix: ``shard shard-000003, key ep_7_w0002: ...``, ``manifest.json: ...``,
``episodes.zarr/ep_7: ...``. It fails on an incomplete job (``complete: false``, naming the failed
shards), sample keys or episode ids stored in two shards, zarr groups no shard lists (orphans), tar paths
in the manifests that point outside the store, a ``stats.json`` that is not the merge of the shard
partials, and, in deep mode, on any byte that differs from the recorded sha256 (tar and per sample),
``.npy`` headers that do not match their data (checked before anything is allocated) and damaged zarr
chunks (every chunk is read). ``validate_store_report`` also says what a quick run skipped and how much
was checked, for ``motiondata validate --quick/--json``. ``shard_intact`` is the done-check of
``build --verify``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from motiondata.errors import StoreError
from motiondata.store.errors_log import read_errors
from motiondata.store.layout import SHARDS_DIR, shard_name, shard_tar
from motiondata.store.manifest import (check_job_manifest, check_shard_manifest, read_job_manifest,
                                       read_shard_manifest, schema_problems)
from motiondata.store.npy_member import decode_member
from motiondata.store.objstore import is_remote, local_path
from motiondata.store.shards import describe_sample, file_sha256, iter_members, sample_digest
from motiondata.store.validate_remote import fetched_tar
from motiondata.store.validate_zarr import check_stats, check_zarr

log = logging.getLogger(__name__)

SHARD_FILE = re.compile(r"^shard-(\d+)\.tar$")
SHARD_NAME = re.compile(r"^shard-(\d+)$")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
MAX_LISTED = 20  # problems of one kind listed one by one; the rest are counted


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


def _check_sample(shard: str, key: str, members: list, entry: dict | None, tally: Counter) -> list[str]:
    where = _at(shard, key)
    tally["samples"] += 1
    if entry is None:
        return [f"{where}: sample is not listed in the shard manifest; rewrite the shard"]
    problems = []
    if "sha256" in entry and sample_digest((f"{key}.{n}.{e}", d) for n, e, d in members) != entry["sha256"]:
        problems.append(f"{where}: sample bytes differ from the manifest's sha256 (corrupted); rewrite the shard")
    try:
        sample = {name: decode_member(ext, data) for name, ext, data in members}
    except (ValueError, StoreError) as err:
        return problems + [f"{where}: undecodable member ({err})"]
    doc = {"__key__": key, **describe_sample(sample, json_values=True)}
    problems += [f"{where}: sample schema: {p}" for p in schema_problems("sample", doc)]
    meta = sample.get("meta")
    if isinstance(meta, dict) and (meta.get("episode"), meta.get("window")) != (entry["episode"], entry["window"]):
        problems.append(f"{where}: meta says episode {meta.get('episode')!r} window {meta.get('window')!r}, the "
                        f"manifest {entry['episode']!r} window {entry['window']!r}; rewrite the shard")
    return problems


def _check_members(shard: str, path: Path, manifest: dict[str, Any], tally: Counter) -> list[str]:
    entries = {s["key"]: s for s in manifest["samples"]}
    problems, keys = [], []
    try:
        for key, members in _grouped(path):
            keys.append(key)
            problems += _check_sample(shard, key, members, entries.get(key), tally)
    except StoreError as err:
        return problems + [str(err)]
    if keys != manifest["keys"]:
        missing = [k for k in manifest["keys"] if k not in set(keys)]
        detail = f"missing {missing[:5]}" if missing else "order differs or a key repeats"
        problems.append(f"{_at(shard)}: tar holds {len(keys)} samples, manifest lists {len(manifest['keys'])} "
                        f"({detail}); rewrite the shard")
    return problems


def _check_tar(out: Path, index: int, manifest: dict[str, Any], deep: bool, tally: Counter) -> list[str]:
    shard, path = shard_name(index), shard_tar(out, index)
    if not path.is_file():
        return [f"{_at(shard)}: tar {path} is missing; rerun the job to rewrite it"]
    size = path.stat().st_size
    tally["shards"] += 1
    problems = []
    if size != manifest["bytes"]:
        problems.append(f"{_at(shard)}: tar has {size} bytes, manifest says {manifest['bytes']} (truncated or "
                        "rewritten); delete the shard's .json and rerun the job")
    if not deep:
        tally["bytes_skipped"] += size
        tally["samples_skipped"] += manifest["num_samples"]
        return problems
    tally["bytes_hashed"] += size
    with fetched_tar(path):  # a remote store's tar is downloaded for this check only
        if file_sha256(path) != manifest["sha256"]:
            problems.append(f"{_at(shard)}: sha256 differs from the manifest (corrupted); rewrite the shard "
                            "(`motiondata build --verify` rebuilds it)")
        return problems + _check_members(shard, path, manifest, tally)


def tar_path_problem(tar: Any, expected: str | None = None) -> str | None:
    """Why a manifest's ``tar`` entry is refused: not a relative path inside the store (absolute, ``..``,
    a URL), or not ``expected`` when given."""
    if not isinstance(tar, str) or not tar:
        return f"tar {tar!r} is not a path"
    parts = re.split(r"[\\/]", tar)
    if URL.match(tar) or tar.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", tar) or ".." in parts:
        return f"tar {tar[:120]!r} lies outside the store (absolute paths, '..' and URLs are refused)"
    if expected is not None and tar != expected:
        return f"tar {tar[:120]!r} is not the shard's own file {expected!r}"
    return None


def shard_intact(out: str | Path, index: int) -> bool:
    """True when shard ``index`` has a readable manifest and its tar's sha256 equals the recorded one
    (the check of ``build --verify``: a same-size byte flip makes it False)."""
    try:
        manifest = read_shard_manifest(out, index)
    except StoreError:
        return False
    path = shard_tar(out, index)
    if not isinstance(manifest, dict) or not path.is_file() or path.stat().st_size != manifest.get("bytes"):
        return False
    return file_sha256(path) == manifest.get("sha256")


def check_shard(out: str | Path, index: int, deep: bool = True, listed: dict | None = None,
                tally: Counter | None = None) -> list[str]:
    """Problems of one shard: manifest, agreement with the job manifest's entry, tar and samples."""
    out, shard, tally = Path(out), shard_name(index), tally if tally is not None else Counter()
    try:
        manifest = read_shard_manifest(out, index)
    except StoreError as err:
        return [f"{_at(shard)}: {err}"]
    if manifest is None:
        return [f"{_at(shard)}: manifest {SHARDS_DIR}/{shard}.json is missing (shard not done); rerun the job"]
    problems = [f"{_at(shard)}: manifest: {p}" for p in check_shard_manifest(manifest)]
    if problems:
        return [p + "; rerun the job to rewrite it" for p in problems]
    for field in ("num_samples", "sha256"):
        if listed is not None and listed.get(field) != manifest[field]:
            problems.append(f"{_at(shard)}: manifest.json lists {field} {listed.get(field)!r}, the shard "
                            f"manifest {manifest[field]!r}; rerun the job to rewrite manifest.json")
    bad_tar = tar_path_problem(manifest["tar"])
    if bad_tar:
        problems.append(f"{_at(shard)}: shard manifest: {bad_tar}; set it to {SHARDS_DIR}/{shard}.tar")
    return problems + _check_tar(out, index, manifest, deep, tally)


def _shard_indices_on_disk(out: Path) -> list[int]:
    folder = out / SHARDS_DIR
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := SHARD_FILE.match(p.name)))


def _incomplete(job: dict) -> list[str]:
    """``complete: false``: the job did not store every planned shard; name the failed ones."""
    if job.get("complete", True) is not False:
        return []
    failed = job.get("failed_shards") or []
    named = [f"{f.get('shard', '?')} ({str(f.get('reason', 'no reason recorded'))[:200]})" if isinstance(f, dict)
             else str(f) for f in failed]
    what = f"{len(named)} shard(s) failed: " + "; ".join(named[:MAX_LISTED]) if named else "shards are missing"
    return [f"manifest.json: job incomplete (complete: false): {what}; fix the cause and rerun `motiondata "
            "build` with the same --out"]


def _listed(out: Path, job: dict, deep: bool, tally: Counter) -> tuple[list[str], list[int]]:
    """Problems of the shards ``manifest.json`` lists (and their tar paths), and their indices."""
    problems, indices = [], []
    for entry in job["shards"]:
        index = int(SHARD_NAME.match(entry["shard"]).group(1))
        indices.append(index)
        bad_tar = tar_path_problem(entry["tar"], f"{SHARDS_DIR}/{entry['shard']}.tar")
        if bad_tar:
            problems.append(f"manifest.json: shard {entry['shard']}: {bad_tar}; a loader would read that file: set "
                            f"it to {SHARDS_DIR}/{entry['shard']}.tar or rerun the job")
        problems += check_shard(out, index, deep, listed=entry, tally=tally)
    return problems, indices


def _check_job(out: Path, deep: bool, tally: Counter) -> tuple[list[str], list[int], dict | None]:
    """Problems of the job manifest and of every shard it lists; returns (problems, indices, manifest)."""
    try:
        job = read_job_manifest(out)
    except StoreError as err:
        return [f"manifest.json: {err}"], _shard_indices_on_disk(out), None
    if job is None:
        return [f"manifest.json: missing in {out} (job not finished, or not a store); run `motiondata build`"], \
            _shard_indices_on_disk(out), None
    if not isinstance(job, dict):
        return ["manifest.json: not a JSON object; rerun the job to rewrite it"], _shard_indices_on_disk(out), None
    problems = [f"manifest.json: {p}" for p in check_job_manifest(job)] + _incomplete(job)
    if schema_problems("job_manifest", job):
        return problems, _shard_indices_on_disk(out), None
    listed, indices = _listed(out, job, deep, tally)
    stray = sorted(set(_shard_indices_on_disk(out)) - set(indices))
    problems += listed + [f"{_at(shard_name(i))}: tar on disk but not listed in manifest.json; delete it or rerun"
                          for i in stray]
    return problems, indices, job


def _shard_manifests(out: Path, indices: list[int]) -> dict[int, dict]:
    manifests = {}
    for index in indices:
        try:
            manifest = read_shard_manifest(out, index)
        except StoreError:
            continue
        if isinstance(manifest, dict) and isinstance(manifest.get("episodes"), list):
            manifests[index] = manifest
    return manifests


def _twice(kind: str, owners: dict[str, list[str]], fix: str) -> list[str]:
    doubled = sorted((name, shards) for name, shards in owners.items() if len(shards) > 1)
    problems = [f"shard {shards[1]}, {kind} {name}: also stored in {', '.join(s for s in shards if s != shards[1])}; "
                f"{fix}" for name, shards in doubled[:MAX_LISTED]]
    if len(doubled) > MAX_LISTED:
        problems.append(f"{len(doubled) - MAX_LISTED} more {kind}s are stored in more than one shard; {fix}")
    return problems


def _duplicates(manifests: dict[int, dict]) -> list[str]:
    """Sample keys and episode ids that more than one shard manifest lists."""
    keys: dict[str, list[str]] = {}
    episodes: dict[str, list[str]] = {}
    for index, manifest in sorted(manifests.items()):
        for key in dict.fromkeys(map(str, manifest.get("keys") or [])):
            keys.setdefault(key, []).append(shard_name(index))
        for eid in dict.fromkeys(map(str, manifest["episodes"])):
            episodes.setdefault(eid, []).append(shard_name(index))
    fix = "an input was stored twice (inputs changed between runs?): rebuild into a fresh --out"
    return _twice("key", keys, fix) + _twice("episode", episodes, fix)


def _check_errors(out: Path, job: dict | None) -> list[str]:
    try:
        records = read_errors(out)
    except StoreError as err:
        return [f"errors.jsonl: {err}"]
    skipped = sum(1 for r in records if isinstance(r, dict) and r.get("stage") == "skip")
    if job is not None and (job.get("num_errors"), job.get("num_skipped", 0)) != (len(records) - skipped, skipped):
        return [f"manifest.json: num_errors {job.get('num_errors')} (+ {job.get('num_skipped', 0)} skipped) but "
                f"errors.jsonl holds {len(records)} records ({skipped} skipped); "
                "rerun `motiondata build` with the same --out to rewrite both"]
    return []


def _skipped(tally: Counter, deep: bool) -> list[str]:
    if deep:
        unchecked = tally["arrays_without_checksum"]
        return [f"checksums of {unchecked} zarr arrays written without crc32c (an older store): a flipped byte in "
                "their chunks can decode unnoticed; rebuild the store to add them"] if unchecked else []
    rerun = "run the deep check (without --quick) to cover it"
    return [f"sha256 of {tally['shards']} shard tars ({tally['bytes_skipped']} bytes): a same-size byte flip goes "
            f"unnoticed; {rerun}",
            f"decoding {tally['samples_skipped']} samples (.npy headers, sample schemas, per-sample sha256); {rerun}",
            f"reading {tally['chunks_skipped']} chunks of {tally['arrays']} zarr arrays: a damaged chunk goes "
            f"unnoticed; {rerun}"]


def validate_store_report(out: str | Path, deep: bool = True) -> dict[str, Any]:
    """``{"ok", "deep", "problems", "skipped", "checked"}`` for the store at ``out``: ``problems`` as in
    :func:`validate_store`; ``skipped`` says, one line per kind, what ``deep=False`` (``--quick``) did
    not check and what that misses; ``checked`` counts shards, samples, bytes hashed, episodes, arrays
    and chunks read. ``out`` may be an object store URL (``motiondata.store.validate_remote``)."""
    if is_remote(out):  # s3://bucket/prefix...: the same checks on a temporary local copy
        from motiondata.store.validate_remote import validate_remote_report

        return validate_remote_report(str(out), deep)
    out, tally = local_path(out), Counter()
    problems, indices, job = _check_job(out, deep, tally)
    if job is None:
        for index in indices:
            problems += check_shard(out, index, deep, tally=tally)
    manifests = _shard_manifests(out, indices)
    episodes = {str(e) for m in manifests.values() for e in m["episodes"]}
    problems += _duplicates(manifests)
    problems += check_zarr(out, episodes, deep, tally)
    problems += check_stats(out, indices if job is not None else None) + _check_errors(out, job)
    for p in problems:
        log.info("store problem: %s", p)
    checked = {k: int(tally[k]) for k in ("shards", "samples", "bytes_hashed", "episodes", "arrays", "chunks")}
    return {"ok": not problems, "deep": deep, "problems": problems, "skipped": _skipped(tally, deep),
            "checked": checked}


def validate_store(out: str | Path, deep: bool = True) -> list[str]:
    """Every problem of the store at ``out`` (empty list: sound). ``deep=False`` skips hashing and
    decoding the shards and reading the zarr chunks (sizes, manifests, schemas, duplicates, orphans and
    stats are still checked); :func:`validate_store_report` says what was skipped."""
    return validate_store_report(out, deep)["problems"]
