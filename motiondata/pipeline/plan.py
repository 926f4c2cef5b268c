"""Plan: list every source's work units (cheap: no frame decoding) and group them into shards.

Every unit gets a key (``source:unit_id``), an episode id (``source_unit_id``, unique in the job: a unit
whose id clashes with an earlier one becomes a ``plan`` error record) and an input fingerprint.

The plan is stable under appends: units already recorded in a shard manifest of ``--out`` keep their
shard; new units fill the free shard indices from 0 upwards, ``episodes_per_shard`` at a time, in listing
order. On a fresh store this is the plain chunking of the listing, so a rerun (or a resumed, killed run)
reproduces the same shards; adding a file that sorts first only adds a shard after the existing ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Iterator

from motiondata.pipeline.fingerprint import unit_fingerprint
from motiondata.pipeline.spec import JobSpec
from motiondata.sources import open_source
from motiondata.store.errors_log import error_record

log = logging.getLogger(__name__)

MAX_EPISODE_ID = 128  # episode ids name zarr groups and temp dirs: keep them well under the 255-byte limit


@dataclass(frozen=True)
class ShardPlan:
    index: int
    units: tuple[dict[str, Any], ...]  # each: {"source": int, "unit": {...}, "key", "episode", "fingerprint"}
    excluded: tuple[tuple[str, str], ...] = ()  # (unit key, reason): units isolated after crashing the shard
    stages: tuple[dict[str, str], ...] | None = None  # stage name + config_hash the driver checked

    def unit_ids(self) -> list[str]:
        return [u["key"] for u in self.units]

    def excluding(self, key: str, reason: str) -> "ShardPlan":
        return dataclasses.replace(self, excluded=self.excluded + ((key, reason),))

    def inputs(self) -> list[dict[str, Any]]:
        """What the shard manifest records per unit: key, episode id, file and input fingerprint."""
        return [{"unit": u["key"], "episode": u["episode"], "file": str(u["unit"].get("file", "")),
                 "fingerprint": fingerprint_of(u)} for u in self.units]


def episode_id_for(source_name: str, unit_id: str) -> str:
    """``<source>_<unit id>``; ids longer than ``MAX_EPISODE_ID`` keep a prefix plus a short hash."""
    eid = f"{source_name}_{unit_id}"
    if len(eid) <= MAX_EPISODE_ID:
        return eid
    digest = hashlib.sha1(eid.encode()).hexdigest()[:12]
    return f"{eid[:MAX_EPISODE_ID - 13]}_{digest}"


def unit_key(source_name: str, unit_id: str) -> str:
    return f"{source_name}:{unit_id}"


def stage_hashes(stages: list[Any]) -> list[dict[str, str]]:
    """Name and ``config_hash()`` (weights included where a stage hashes them) of each bound stage, in order."""
    return [{"name": b.stage.name, "config_hash": b.stage.config_hash()} for b in stages]


def open_spec_source(spec: JobSpec, index: int):
    src = spec.sources[index]
    return open_source(src.kind, src.path, **src.options)


def _listing_records(src: Any, source: Any) -> list[dict[str, Any]]:
    """A reader's ``listing_problems`` (inputs it left out, e.g. duplicated rows) as ``plan`` error records;
    their ``episode``/``unit`` ids get the source's prefix like every unit's."""
    records = []
    for problem in getattr(source, "listing_problems", None) or []:
        if not isinstance(problem, dict):
            problem = {"reason": str(problem)}
        episode, unit = problem.get("episode"), problem.get("unit", problem.get("episode"))
        stage = "skip" if problem.get("skipped") else "plan"  # left out on purpose (a static clip): not damage
        records.append(error_record(problem.get("file", src.path),
                                    None if episode is None else episode_id_for(src.name, str(episode)), stage,
                                    str(problem.get("reason", problem)),
                                    unit=None if unit is None else unit_key(src.name, str(unit))))
    return records


def fingerprint_of(entry: dict[str, Any]) -> dict[str, Any]:
    """The unit's input fingerprint, computed now if planning deferred it (units no manifest records yet:
    the shard task fingerprints what it is about to read, so planning a million units stats no file)."""
    if entry.get("fingerprint") is None:
        entry["fingerprint"] = unit_fingerprint(entry["unit"], entry["path"], {})
    return entry["fingerprint"]


def _entry(index: int, name: str, path: str, unit: dict[str, Any], cache: dict, eager: Any) -> dict[str, Any]:
    uid = str(unit["id"])
    key = unit_key(name, uid)
    fingerprint = unit_fingerprint(unit, path, cache) if eager is True or key in eager else None
    return {"source": index, "unit": unit, "key": key, "episode": episode_id_for(name, uid),
            "fingerprint": fingerprint, "path": path}


def list_units(spec: JobSpec, eager: Any = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All units in spec order (with key, episode id, fingerprint), and error records for sources that
    could not be listed at all or reported listing problems. ``eager``: True, or the unit keys whose
    fingerprint is computed now (the others on first use, ``fingerprint_of``)."""
    units, errors, cache = [], [], {}
    for i, src in enumerate(spec.sources):
        try:
            source = open_spec_source(spec, i)
            listed = source.units()
        except Exception as exc:  # a missing folder or unreadable index must not stop other sources
            log.error("source %s (%s) cannot be listed: %s", src.name, src.path, exc)
            errors.append(error_record(src.path, None, "plan", f"{type(exc).__name__}: {exc}"))
            continue
        errors.extend(_listing_records(src, source))
        if not listed:
            errors.append(error_record(src.path, None, "plan", "no episodes or videos found under this path"))
        units.extend(_entry(i, src.name, src.path, u, cache, eager) for u in listed)
    return units, errors


def unique_units(entries: list[dict[str, Any]], recorded: set[str] = frozenset()
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Keep one unit per episode id: units already recorded in the store win, then listing order. The
    others become ``plan`` records naming the clash (never two units under one key)."""
    order = sorted(range(len(entries)), key=lambda i: entries[i]["key"] not in recorded)
    owner: dict[str, str] = {}
    keys: set[str] = set()
    kept, errors = [], []
    for i in order:
        entry = entries[i]
        if entry["key"] in keys:
            what = "is listed twice"
        elif entry["episode"] in owner:
            what = f"clashes with unit {owner[entry['episode']]}"
        else:
            owner[entry["episode"]] = entry["key"]
            keys.add(entry["key"])
            kept.append(i)
            continue
        errors.append(error_record(entry["unit"].get("file", ""), entry["episode"], "plan",
                                   f"episode id {entry['episode']!r} of unit {entry['key']} {what}; only the first is "
                                   "stored: rename the file, demo or source so that ids differ", unit=entry["key"]))
    return [entries[i] for i in sorted(kept)], errors


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _free_indices(used: set[int]) -> Iterator[int]:
    return (i for i in itertools.count() if i not in used)


def plan_shards(spec: JobSpec, recorded: dict[int, list[str]] | None = None
                ) -> tuple[list[ShardPlan], list[dict[str, Any]]]:
    """Shard plans and plan-stage error records. ``recorded`` (shard index -> unit keys of its manifest
    in ``--out``) pins those units to their shards; the other units fill the free indices in order."""
    recorded = recorded or {}
    owner = {key: index for index, keys in recorded.items() for key in keys}
    with _no_gc():  # millions of small dicts: the cyclic collector would rescan them over and over
        entries, errors = list_units(spec, eager=set(owner))
        entries, clashes = unique_units(entries, set(owner))
    by_index: dict[int, list[dict[str, Any]]] = {index: [] for index in recorded}
    fresh = []
    for entry in entries:
        (by_index[owner[entry["key"]]] if entry["key"] in owner else fresh).append(entry)
    per, free = spec.episodes_per_shard, _free_indices(set(recorded))
    for start in range(0, len(fresh), per):
        by_index[next(free)] = fresh[start:start + per]
    for index in range(max(by_index, default=-1)):  # no gaps: an index nobody fills is an empty shard
        by_index.setdefault(index, [])
    plans = [ShardPlan(index, tuple(by_index[index])) for index in sorted(by_index)]
    return plans, errors + clashes
