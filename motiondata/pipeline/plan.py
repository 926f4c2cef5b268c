"""Plan: list every source's work units (cheap: no frame decoding) and group them into shards.

Every unit gets a key (``source:unit_id``), an episode id (``source_unit_id``, unique in the job: a unit
whose id clashes with an earlier one becomes a ``plan`` error record) and an input fingerprint.

The plan is stable under appends: units already recorded in a shard manifest of ``--out`` keep their
shard; new units fill the free shard indices from 0 upwards, ``episodes_per_shard`` at a time, in listing
order. On a fresh store this is the plain chunking of the listing, so a rerun (or a resumed, killed run)
reproduces the same shards; adding a file that sorts first only adds a shard after the existing ones.

Planning holds no dict per unit: each source's listing stays as the source gives it (``unit_listing()``,
a sequence that makes each unit dict on use, where the source has one; else its ``units()`` list), the
dedupe keeps 8 bytes per unit (a hash of each episode id; only units whose hashes repeat are compared as
strings), and every ``ShardPlan`` points into one shared ``PlanListing``. A shard's entry dicts are made
when its units are used, and a plan pickles as its own entries only.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import gc
import hashlib
import logging
from array import array
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from motiondata.pipeline.fingerprint import unit_fingerprint
from motiondata.pipeline.spec import JobSpec
from motiondata.sources import open_source
from motiondata.store.errors_log import error_record

log = logging.getLogger(__name__)

MAX_EPISODE_ID = 128  # episode ids name zarr groups and temp dirs: keep them well under the 255-byte limit


@dataclass(frozen=True, eq=False, slots=True)
class ShardPlan:
    """One shard's units. ``listing`` is a tuple of entry dicts (``{"source": int, "unit": {...}, "key",
    "episode", "fingerprint", "path"}``) or, as ``plan_shards`` makes them, the job's shared ``PlanListing``
    (the entries of shard ``index`` are made on use, so a million planned units hold no dict each). A plan
    pickles as its own entries only (a Ray task never receives the listing)."""
    index: int
    listing: Any
    excluded: tuple[tuple[str, str], ...] = ()  # (unit key, reason): units isolated after crashing the shard
    stages: tuple[dict[str, str], ...] | None = None  # stage name + config_hash the driver checked

    @property
    def units(self) -> tuple[dict[str, Any], ...]:
        listing = self.listing
        return listing if isinstance(listing, tuple) else listing.entries(self.index)

    def unit_ids(self) -> list[str]:
        return [u["key"] for u in self.units]

    def excluding(self, key: str, reason: str) -> "ShardPlan":
        return dataclasses.replace(self, excluded=self.excluded + ((key, reason),))

    def inputs(self) -> list[dict[str, Any]]:
        """What the shard manifest records per unit: key, episode id, file and input fingerprint."""
        return [{"unit": u["key"], "episode": u["episode"], "file": str(u["unit"].get("file", "")),
                 "fingerprint": fingerprint_of(u)} for u in self.units]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShardPlan) and (self.index, self.units, self.excluded, self.stages) == (
            other.index, other.units, other.excluded, other.stages)

    def __hash__(self) -> int:
        return hash((self.index, self.excluded))

    def __reduce__(self) -> tuple:
        return ShardPlan, (self.index, self.units, self.excluded, self.stages)


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


def _listing_of(spec: JobSpec, index: int, errors: list[dict[str, Any]]) -> Sequence[dict[str, Any]] | None:
    """Source ``index``'s units: its ``unit_listing()`` (a compact sequence of unit dicts) where it has one,
    else ``units()``; ``None`` (and an error record) if it cannot be listed at all."""
    src = spec.sources[index]
    try:
        source = open_spec_source(spec, index)
        listed = source.unit_listing() if hasattr(source, "unit_listing") else source.units()
    except Exception as exc:  # a missing folder or unreadable index must not stop other sources
        log.error("source %s (%s) cannot be listed: %s", src.name, src.path, exc)
        errors.append(error_record(src.path, None, "plan", f"{type(exc).__name__}: {exc}"))
        return None
    errors.extend(_listing_records(src, source))
    if len(listed) == 0:
        errors.append(error_record(src.path, None, "plan", "no episodes or videos found under this path"))
    return listed


def _unique_order(entries: Sequence[dict[str, Any]], recorded: set[str]) -> tuple[list[int], list[dict[str, Any]]]:
    """``unique_units`` on positions: the kept ones (ascending) and the clash records."""
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
    return sorted(kept), errors


def unique_units(entries: list[dict[str, Any]], recorded: set[str] = frozenset()
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Keep one unit per episode id: units already recorded in the store win, then listing order. The
    others become ``plan`` records naming the clash (never two units under one key)."""
    kept, errors = _unique_order(entries, recorded)
    return [entries[i] for i in kept], errors


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class PlanListing:
    """The planned units of a job, compact: each source's listing (a sequence of unit dicts, kept as the
    source gave it), the fingerprints planning took (recorded units only) and which listing positions
    each shard holds: recorded shards name theirs, the others take ``per`` consecutive ``fresh``
    positions each, in free-index order. Entry dicts are made on use (``entries``)."""

    def __init__(self, per: int):
        self.per, self.total = per, 0
        self.sources: list[tuple[int, str, str, Sequence[dict[str, Any]]]] = []  # spec index, name, path, units
        self.starts: list[int] = []  # position of each listed source's first unit
        self.fingerprints: dict[int, dict[str, Any]] = {}  # position -> fingerprint taken while planning
        self.pinned: dict[int, tuple[int, ...]] = {}  # recorded shard index -> its positions
        self.recorded: list[int] = []  # recorded shard indices, ascending (kept even when now empty)
        self.fresh: Sequence[int] = range(0)  # positions of the other units, in listing order
        self._last: tuple[int, tuple[dict[str, Any], ...]] | None = None

    def __repr__(self) -> str:
        return f"PlanListing({self.total} units, {len(self.sources)} sources)"

    def add(self, index: int, name: str, path: str, listed: Sequence[dict[str, Any]]) -> int:
        self.sources.append((index, name, path, listed))
        self.starts.append(self.total)
        self.total += len(listed)
        return self.starts[-1]

    def entry(self, position: int) -> dict[str, Any]:
        k = bisect.bisect_right(self.starts, position) - 1
        index, name, path, listed = self.sources[k]
        unit = listed[position - self.starts[k]]
        uid = str(unit["id"])
        return {"source": index, "unit": unit, "key": unit_key(name, uid), "episode": episode_id_for(name, uid),
                "fingerprint": self.fingerprints.get(position), "path": path}

    def positions(self, index: int) -> Sequence[int]:
        below = bisect.bisect_left(self.recorded, index)
        if below < len(self.recorded) and self.recorded[below] == index:
            return self.pinned.get(index, ())
        rank = index - below  # the rank-th free index
        return self.fresh[rank * self.per:(rank + 1) * self.per]

    def entries(self, index: int) -> tuple[dict[str, Any], ...]:
        """Shard ``index``'s entry dicts; the last shard asked for is kept (callers walk one shard's units
        again and again: the streaming executor finds each unit's position in its shard)."""
        last = self._last
        if last is not None and last[0] == index:
            return last[1]
        entries = tuple(self.entry(int(p)) for p in self.positions(index))
        self._last = (index, entries)
        return entries

    def shard_count(self) -> int:
        """Indices 0 .. the last recorded or fresh shard (an index nobody fills is an empty shard)."""
        last = -(-len(self.fresh) // self.per) - 1  # rank of the last fresh shard -> its free index
        if last >= 0:
            for index in self.recorded:
                if index > last:
                    break
                last += 1
        return max(last, self.recorded[-1] if self.recorded else -1) + 1


def _scan(catalog: PlanListing, listed: Sequence[dict[str, Any]], name: str, path: str, start: int,
          owner: dict[str, int], hashes: array, pinned: dict[int, int], cache: dict) -> None:
    """One source's units: the hash of each episode id (for dedupe) and, for units recorded in a shard
    manifest, their shard and fingerprint (the only per-unit state besides the hashes). A listing with
    ``unit_ids()`` (each unit's ``"id"``, in order) is scanned without making its units."""
    ids = listed.unit_ids() if hasattr(listed, "unit_ids") else (unit["id"] for unit in listed)
    for j, uid in enumerate(ids):
        uid = str(uid)
        hashes.append(hash(episode_id_for(name, uid)))
        if owner and (key := unit_key(name, uid)) in owner:
            pinned[start + j] = owner[key]
            catalog.fingerprints[start + j] = unit_fingerprint(listed[j], path, cache)


def _dropped(catalog: PlanListing, hashes: array, recorded: set[str]) -> tuple[set[int], list[dict[str, Any]]]:
    """``unique_units`` over the units whose episode id hash is not unique (every real clash is among them):
    the positions it drops and its records, exactly as over the whole listing."""
    values = np.frombuffer(hashes, dtype=np.int64) if len(hashes) else np.empty(0, np.int64)
    ordered = np.sort(values)
    twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(twice):
        return set(), []
    suspects = [int(p) for p in np.flatnonzero(np.isin(values, twice))]
    kept, clashes = _unique_order([catalog.entry(p) for p in suspects], recorded)
    return set(suspects) - {suspects[i] for i in kept}, clashes


def _assign(catalog: PlanListing, recorded: dict[int, list[str]], pinned: dict[int, int], dropped: set[int]) -> None:
    """Recorded units keep their shard; the others fill the free indices in listing order."""
    shards: dict[int, list[int]] = {index: [] for index in recorded}
    for position, index in pinned.items():
        if position not in dropped:
            shards[index].append(position)
    catalog.pinned = {index: tuple(positions) for index, positions in shards.items() if positions}
    catalog.recorded = sorted(recorded)
    if not pinned and not dropped:
        catalog.fresh = range(catalog.total)
        return
    fresh = np.ones(catalog.total, dtype=bool)
    fresh[list(pinned)] = False
    fresh[list(dropped)] = False
    catalog.fresh = np.flatnonzero(fresh)


def plan_shards(spec: JobSpec, recorded: dict[int, list[str]] | None = None
                ) -> tuple[list[ShardPlan], list[dict[str, Any]]]:
    """Shard plans and plan-stage error records. ``recorded`` (shard index -> unit keys of its manifest
    in ``--out``) pins those units to their shards; the other units fill the free indices in order.
    Memory: the sources' listings as they give them, 8 bytes per unit while deduplicating, one small
    ``ShardPlan`` per shard; recorded units add their shard and fingerprint."""
    recorded = recorded or {}
    owner = {key: index for index, keys in recorded.items() for key in keys}
    catalog, errors, hashes, pinned, cache = PlanListing(spec.episodes_per_shard), [], array("q"), {}, {}
    with _no_gc():  # many small objects: the cyclic collector would rescan them over and over
        for i, src in enumerate(spec.sources):
            listed = _listing_of(spec, i, errors)
            if listed is not None:
                _scan(catalog, listed, src.name, src.path, catalog.add(i, src.name, src.path, listed),
                      owner, hashes, pinned, cache)
        dropped, clashes = _dropped(catalog, hashes, set(owner))
        del hashes
        _assign(catalog, recorded, pinned, dropped)
        plans = [ShardPlan(index, catalog) for index in range(catalog.shard_count())]
    return plans, errors + clashes
