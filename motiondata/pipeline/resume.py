"""Resuming into an existing ``--out``: what its shard manifests recorded, and whether that still holds.

A finished shard is kept only when it was built from the same spec, the same stage configs (hashes,
weights included) and the same inputs (unit keys + fingerprints). Anything else is refused with one
line naming what changed, or, with ``rebuild_changed``, exactly the affected shards are redone.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from motiondata.errors import StoreError
from motiondata.pipeline.fingerprint import describe_change
from motiondata.pipeline import remote_out
from motiondata.pipeline.plan import ShardPlan
from motiondata.store import layout
from motiondata.store.manifest import read_shard_manifest

log = logging.getLogger(__name__)

MANIFEST_NAME = re.compile(r"^shard-(\d{6})\.json$")
REBUILD_HINT = "build into a new --out, or pass --rebuild-changed"


def existing_manifests(out: Path) -> dict[int, dict[str, Any]]:
    """Readable shard manifests in ``OUT/shards`` by index (an unreadable one counts as absent)."""
    folder = out / layout.SHARDS_DIR
    found: dict[int, dict[str, Any]] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        match = MANIFEST_NAME.match(path.name)
        if not match:
            continue
        try:
            manifest = read_shard_manifest(out, int(match.group(1)))
        except StoreError as err:
            log.warning("%s; the shard will be rebuilt", err)
            continue
        if isinstance(manifest, dict):
            found[int(match.group(1))] = manifest
    return found


def recorded_inputs(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """unit key -> its ``inputs`` entry (episode, file, fingerprint); empty for manifests without one."""
    return {entry["unit"]: entry for entry in manifest.get("inputs") or [] if isinstance(entry, dict)}


def recorded_units(manifests: dict[int, dict[str, Any]]) -> dict[int, list[str]]:
    return {index: list(recorded_inputs(m)) for index, m in manifests.items()}


def _stage_key(entry: dict[str, Any], other: dict[str, Any] | None) -> tuple[Any, ...]:
    """name, config_hash and the weights digest (compared only where both builds recorded one)."""
    weights = entry.get("weights") if isinstance(other, dict) and "weights" in other else None
    return entry.get("name"), entry.get("config_hash"), weights


def _stage_change(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str | None:
    old = [s for s in old if isinstance(s, dict)]
    pad = [None] * abs(len(old) - len(new))
    old_keys = [_stage_key(s, t) for s, t in zip(old, list(new) + pad)]
    new_keys = [_stage_key(t, s) for t, s in zip(new, list(old) + pad)]
    if old_keys == new_keys:
        return None
    old_names, new_names = [k[0] for k in old_keys], [k[0] for k in new_keys]
    if old_names == new_names:
        return "stage " + next(a[0] for a, b in zip(old_keys, new_keys) if a != b) + " changed"
    return f"stages changed (were [{', '.join(map(str, old_names))}], now [{', '.join(new_names)}])"


def stale_reason(manifest: dict[str, Any], spec_hash: str, stages: list[dict[str, Any]]) -> str | None:
    """Why a shard built earlier no longer matches the job (spec, stage configs or manifest format)."""
    shard = manifest.get("shard", "?")
    if isinstance(manifest.get("stages"), list):
        change = _stage_change(manifest["stages"], stages)
        if change:
            return f"{change} since the store was built ({shard}); {REBUILD_HINT}"
    if manifest.get("spec_hash") != spec_hash:
        return f"the spec changed since the store was built ({shard} was built from another spec); {REBUILD_HINT}"
    if "inputs" not in manifest:
        return f"{shard} was built by an older motiondata without input fingerprints; {REBUILD_HINT}"
    return None


def _rejected_units(manifest: dict[str, Any]) -> set[str]:
    return {e["unit"] for e in manifest.get("errors", []) if e.get("unit")}


def input_changes(plan: ShardPlan, manifest: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(unit key, what changed, was it rejected) for every recorded unit of ``plan`` whose input changed."""
    from motiondata.pipeline.plan import fingerprint_of

    current = {u["key"]: u for u in plan.units}
    rejected = _rejected_units(manifest)
    changes = []
    for key, entry in recorded_inputs(manifest).items():
        what = describe_change(entry.get("fingerprint"), fingerprint_of(current[key]) if key in current else None)
        if what is not None:
            changes.append((key, what, key in rejected))
    return changes


def changed_shards(plans: list[ShardPlan], manifests: dict[int, dict[str, Any]], retry_errors: bool
                   ) -> dict[int, str]:
    """index -> one-line reason, for each finished shard whose recorded inputs differ from the plan's. With
    ``retry_errors`` the shards holding records are rebuilt from the current inputs anyway (a fix to a file
    also changes its other units), so only shards without records are checked."""
    changed = {}
    for plan in plans:
        manifest = manifests.get(plan.index)
        if manifest is None or (retry_errors and manifest.get("errors")):
            continue
        changes = input_changes(plan, manifest)
        if not changes:
            continue
        key, what, rejected = sorted(changes, key=lambda c: not c[2])[0]  # a fixed rejected input first
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        hint = "; it was rejected: if you fixed it, rerun with --retry-errors" if rejected else ""
        changed[plan.index] = (f"input changed since {layout.shard_name(plan.index)} was built: {key} ({what}){more}"
                               f"{hint}; {REBUILD_HINT}")
    return changed


def remove_episode_groups(out: Path, episodes: list[str] | set[str]) -> None:
    for episode in episodes:
        path = layout.zarr_episode(out, episode)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    remote_out.delete_groups(out, episodes)  # a staging folder: its remote store loses them too


def unmark_shard(out: Path, index: int, manifest: dict[str, Any] | None) -> None:
    """Make shard ``index`` not done and remove what it stored: manifest first (the done-marker), then the
    tar, the partial stats and the episodes' zarr groups, so no orphan is left if this is interrupted (on
    a remote store too, in the same order)."""
    layout.shard_manifest(out, index).unlink(missing_ok=True)
    remote_out.delete_objects(out, remote_out.shard_rels(index)[:1])
    remote_out.delete_objects(out, remote_out.shard_rels(index)[1:])
    layout.shard_tar(out, index).unlink(missing_ok=True)
    layout.shard_stats(out, index).unlink(missing_ok=True)
    if manifest:
        remove_episode_groups(out, manifest.get("episodes", []))
