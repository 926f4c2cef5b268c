"""The parts of ``validate_store`` that check ``episodes.zarr`` and ``stats.json``.

- Zarr: every episode group's attributes against ``schemas/episode.schema.json`` and its arrays against
  them; groups that no shard manifest lists (orphans: a crash between the zarr write and the shard
  manifest, or a unit stored twice); in deep mode every chunk of every array is read, so a damaged chunk
  raises (new stores write a crc32c checksum after Blosc, so even a flipped byte is caught; arrays written
  without it are named in ``skipped``).
- Stats: ``stats.json`` must equal the merge of the shard partials (``shards/*.stats.json``), compared by
  content (a stale file left by an older build differs; its mtime alone proves nothing).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr

from motiondata.errors import StoreError
from motiondata.store.episodes_zarr import list_episodes, open_episode
from motiondata.store.layout import shard_manifest, shard_name, shard_stats, stats_file, zarr_store
from motiondata.store.manifest import schema_problems
from motiondata.store.stats import merge_partials, norm_stats_problems, read_partial_stats
from motiondata.store.validate_remote import fetched_episode

STAT_KEYS = ("mean", "std", "q01", "q99")
RTOL, ATOL = 1e-6, 1e-9  # merge order changes float sums by ~1e-15; a stale file differs by far more
WHOLE_ARRAY_BYTES = 64 << 20  # arrays up to this size are read in one call, larger ones chunk row by row


def _arrays(group: zarr.Group) -> Iterable[tuple[str, zarr.Array]]:
    return sorted(((p, n) for p, n in group.members(max_depth=None) if isinstance(n, zarr.Array)),
                  key=lambda pn: pn[0])


def _has_checksum(node: zarr.Array) -> bool:
    return any(type(c).__name__ == "Crc32cCodec" for c in node.compressors)


def _chunk_slices(node: zarr.Array) -> Iterable[tuple[tuple[int, ...], tuple[slice, ...]]]:
    for coords in itertools.product(*(range(n) for n in node.cdata_shape)):
        yield coords, tuple(slice(c * s, min((c + 1) * s, dim)) for c, s, dim in zip(coords, node.chunks, node.shape))


def _bad_chunks(node: zarr.Array) -> list[str]:
    """Chunk coordinates that fail to read (damaged, or checksum mismatch), with the reason."""
    bad = []
    for coords, where in _chunk_slices(node):
        try:
            node[where]
        except Exception as err:  # zarr/numcodecs raise many types for a damaged chunk
            bad.append(f"chunk {'/'.join(map(str, coords)) or '0'} ({type(err).__name__}: {str(err)[:100]})")
    return bad


def _read_all(eid: str, path: str, node: zarr.Array, tally: Counter) -> list[str]:
    """Read every chunk of one array; problems name the episode, array and chunk."""
    tally["chunks"] += node.nchunks
    if not _has_checksum(node):
        tally["arrays_without_checksum"] += 1
    elif node.nchunks_initialized < node.nchunks:  # new stores write every chunk: a missing file is damage
        return [f"episodes.zarr/{eid}: array {path}: {node.nchunks - node.nchunks_initialized} of {node.nchunks} "
                f"chunk files are missing (zarr would serve zeros); rebuild the shard that holds episode {eid} "
                "(delete its shards/*.json and rerun `motiondata build`)"]
    try:
        if node.nbytes <= WHOLE_ARRAY_BYTES:
            node[...]
            return []
    except Exception:  # locate the damaged chunks below
        pass
    bad = _bad_chunks(node)
    return [f"episodes.zarr/{eid}: array {path} {b}: damaged chunk; rebuild the shard that holds episode "
            f"{eid} (delete its shards/*.json and rerun `motiondata build`)" for b in bad[:10]]


def _check_group(out: Path, eid: str, deep: bool, tally: Counter) -> list[str]:
    group = open_episode(out, eid)
    attrs = dict(group.attrs)
    problems = [f"episodes.zarr/{eid}: attrs: {p}" for p in schema_problems("episode", attrs)]
    fields = attrs.get("motiondata", {}).get("fields", {}) if isinstance(attrs.get("motiondata"), dict) else {}
    for name, info in fields.items():
        node = group[name.replace(".", "/")]
        if list(node.shape) != info.get("shape") or node.dtype.name != info.get("dtype"):
            problems.append(f"episodes.zarr/{eid}: array {name} is {node.dtype} {node.shape}, attrs say {info}")
    for path, node in _arrays(group):
        tally["arrays"] += 1
        if deep:
            problems += _read_all(eid, path, node, tally)
        else:
            tally["chunks_skipped"] += node.nchunks
    return problems


def check_zarr(out: Path, episodes: set[str], deep: bool, tally: Counter) -> list[str]:
    """Problems of ``episodes.zarr``: schema, shapes, orphan groups, missing groups, damaged chunks."""
    if not zarr_store(out).exists():
        return []
    try:
        zarr.open_group(str(zarr_store(out)), mode="r", zarr_format=3)
    except Exception as err:  # zarr raises many types for a broken store
        return [f"episodes.zarr: cannot open ({type(err).__name__}: {err}); rebuild the store"]
    problems, stored = [], list_episodes(out)
    for eid in stored:
        tally["episodes"] += 1
        try:
            with fetched_episode(eid) if deep else nullcontext():  # a remote store's chunks, one group at a time
                problems += _check_group(out, eid, deep, tally)
        except Exception as err:  # a corrupt group can fail in zarr in many ways
            problems.append(f"episodes.zarr/{eid}: unreadable ({type(err).__name__}: {err}); rebuild the shard "
                            "that holds it")
    orphans = sorted(set(stored) - episodes)
    problems += [f"episodes.zarr/{eid}: orphan group: no shard manifest lists episode {eid} (left by a failed "
                 "or superseded shard); delete the group, or rebuild into a fresh --out" for eid in orphans]
    missing = sorted(episodes - set(stored))
    if stored and missing:
        problems.append(f"episodes.zarr: {len(missing)} episodes of the shards are missing, e.g. {missing[:5]}; "
                        "rebuild the shards that hold them")
    return problems


# ----------------------------------------------------------------------------- stats.json


def _differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    diffs = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual or name not in expected:
            diffs.append(f"field {name} is only in the {'shard partials' if name in expected else 'stats.json'}")
            continue
        for key in STAT_KEYS:
            want, have = np.asarray(expected[name][key], float), np.asarray(actual[name].get(key, []), float)
            if want.shape != have.shape or not np.allclose(want, have, rtol=RTOL, atol=ATOL):
                err = float(np.max(np.abs(want - have))) if want.shape == have.shape else math.inf
                diffs.append(f"{name}.{key} differs (max |diff| {err:.3g})")
    return diffs


def _newest_manifest(out: Path, indices: list[int]) -> tuple[float, str | None]:
    paths = [(shard_manifest(out, i), shard_name(i)) for i in indices]
    times = [(path.stat().st_mtime, name) for path, name in paths if path.is_file()]
    return max(times, default=(0.0, None))


def _expected_stats(out: Path, indices: list[int]) -> tuple[dict[str, Any] | None, list[str]]:
    partials, problems = [], []
    for index in indices:
        try:
            partial = read_partial_stats(out, index)
        except (StoreError, ValueError, KeyError, TypeError) as err:
            problems.append(f"shard {shard_name(index)}: partial stats {shard_stats(out, index).name} unreadable "
                            f"({type(err).__name__}: {err}); rebuild the shard")
            continue
        if partial is None:
            problems.append(f"shard {shard_name(index)}: partial stats {shard_stats(out, index).name} missing, so "
                            "stats.json cannot be checked; rebuild the shard")
            continue
        partials.append(partial)
    if problems:
        return None, problems
    return (merge_partials(partials).norm_stats()["norm_stats"] if partials else {}), []


def check_stats(out: Path, indices: list[int] | None) -> list[str]:
    """``stats.json`` is openpi-formatted and equals the merge of the listed shards' partial stats."""
    path = stats_file(out)
    if not path.is_file():
        return ["stats.json: missing; rerun `motiondata build` (finalize writes it from the shard partials)"]
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        return [f"stats.json: not JSON ({err}); rerun `motiondata build` to rewrite it"]
    problems = [f"stats.json: {p}" for p in norm_stats_problems(doc)]
    if problems or indices is None:
        return problems
    expected, problems = _expected_stats(out, indices)
    if expected is None:
        return problems
    diffs = _differences(expected, doc["norm_stats"])
    if not diffs:
        return []
    newest, shard = _newest_manifest(out, indices)
    age = f"; it is older than {shard}'s manifest" if shard and path.stat().st_mtime < newest else ""
    return [f"stats.json: does not match the merge of the shard partial stats ({'; '.join(diffs[:5])}){age}; "
            "rerun `motiondata build` with the same --out to rewrite it (finalize merges the partials)"]
