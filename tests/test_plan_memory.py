"""Issue 11 item 5: planning keeps a compact listing; plans match the full-listing algorithm exactly."""

from __future__ import annotations

import dataclasses
import itertools
import pickle
from collections.abc import Sequence

import pytest

from motiondata.pipeline import plan
from motiondata.pipeline.fingerprint import unit_fingerprint
from motiondata.pipeline.plan import ShardPlan, episode_id_for, plan_shards, unique_units, unit_key
from motiondata.pipeline.spec import parse_spec


class Rows(Sequence):
    """A compact listing: unit ``i`` is made on use."""

    def __init__(self, ids: list[str]):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self.ids):
            raise IndexError(i)
        return {"id": self.ids[i], "file": f"/nowhere/{self.ids[i]}.bin", "row": i}


class Plain:
    """A source with ``units()`` only (and a listing problem): the planner keeps its list."""

    def __init__(self, ids: list[str]):
        self.ids = ids
        self.listing_problems = [{"file": "/nowhere/x", "episode": "dup", "reason": "a duplicated index row"}]

    def units(self) -> list[dict]:
        return list(Rows(self.ids))


class Compact(Plain):
    def unit_listing(self) -> Rows:
        return Rows(self.ids)


class Broken:
    def units(self) -> list[dict]:
        raise OSError("index unreadable")


def _spec(names: list[str], per: int):
    sources = [{"kind": "lerobot", "path": f"/nowhere/{n}", "name": n} for n in names]
    return parse_spec({"name": "t", "sources": sources, "shards": {"episodes_per_shard": per}})


def _list_units(spec, eager: set[str]):
    """Every unit's entry dict in spec order (the full listing the old planner held), with listing records."""
    units, errors, cache = [], [], {}
    for i, src in enumerate(spec.sources):
        listed = plan._listing_of(spec, i, errors)
        for unit in listed if listed is not None else []:
            uid = str(unit["id"])
            key = unit_key(src.name, uid)
            fingerprint = unit_fingerprint(unit, src.path, cache) if key in eager else None
            units.append({"source": i, "unit": unit, "key": key, "episode": episode_id_for(src.name, uid),
                          "fingerprint": fingerprint, "path": src.path})
    return units, errors


def _reference(spec, recorded):
    """The planner before issue 11 item 5: every entry dict in memory, dedupe and chunk the list."""
    owner = {key: index for index, keys in recorded.items() for key in keys}
    entries, errors = _list_units(spec, eager=set(owner))
    entries, clashes = unique_units(entries, set(owner))
    by_index = {index: [] for index in recorded}
    fresh = []
    for entry in entries:
        (by_index[owner[entry["key"]]] if entry["key"] in owner else fresh).append(entry)
    free = (i for i in itertools.count() if i not in recorded)
    for start in range(0, len(fresh), spec.episodes_per_shard):
        by_index[next(free)] = fresh[start:start + spec.episodes_per_shard]
    for index in range(max(by_index, default=-1)):
        by_index.setdefault(index, [])
    return [(index, tuple(by_index[index])) for index in sorted(by_index)], errors + clashes


@pytest.fixture
def sources(monkeypatch):
    listed = {}
    monkeypatch.setattr(plan, "open_spec_source", lambda spec, index: listed[index])
    return listed


CASES = [
    ({}, 2),
    ({1: ["lib:b", "lib:d"], 4: ["lib_x:demo_0", "gone:z"], 6: []}, 2),  # recorded units keep their shard
    ({0: ["lib:x_demo_0"]}, 3),  # a recorded unit wins the clash against an earlier one
    ({2: ["lib:a"]}, 1),
]


@pytest.mark.parametrize("recorded,per", CASES)
@pytest.mark.parametrize("collide", [False, True])
def test_compact_plan_equals_the_full_listing_plan(sources, monkeypatch, recorded, per, collide):
    if collide:  # every episode id hashes alike: the exact dedupe must still decide
        monkeypatch.setattr(plan, "hash", lambda text: 7, raising=False)
    sources.update({0: Compact(["a", "b", "x_demo_0", "c", "b", "d", "e"]),
                    1: Plain(["demo_0", "demo_1", "q"]), 2: Broken(), 3: Compact([]), 4: Compact(["a", "z"])})
    spec = _spec(["lib", "lib_x", "bad", "empty", "other"], per)
    plans, errors = plan_shards(spec, recorded)
    expected, expected_errors = _reference(spec, recorded)
    assert [(p.index, p.units) for p in plans] == expected
    assert errors == expected_errors
    assert sum("twice" in e["reason"] for e in errors) == 1 and sum("clashes" in e["reason"] for e in errors) == 1


def test_a_fresh_plan_holds_no_unit_dict_and_pickles_only_its_own_units(sources):
    sources[0] = Compact([f"ep{i:05d}" for i in range(10_000)])
    plans, errors = plan_shards(_spec(["s"], 4))
    assert [e["reason"] for e in errors] == ["a duplicated index row"] and len(plans) == 2500
    listing = plans[0].listing
    assert isinstance(listing.fresh, range) and not listing.fingerprints and not listing.pinned
    assert all(p.listing is listing for p in plans)  # one shared listing, nothing per unit
    blob = pickle.dumps(plans[1234])
    assert len(blob) < 4 * 400  # four entry dicts, not the 10,000-unit listing
    back = pickle.loads(blob)
    assert isinstance(back.listing, tuple) and back == plans[1234]
    assert back.unit_ids() == ["s:ep04936", "s:ep04937", "s:ep04938", "s:ep04939"]


def test_plan_api_works_on_both_forms(sources):
    sources[0] = Compact(["a", "b", "c"])
    (first, second), _ = plan_shards(_spec(["s"], 2))
    staged = dataclasses.replace(second, stages=({"name": "x", "config_hash": "h"},))
    assert staged.listing is second.listing and staged.unit_ids() == ["s:c"]
    isolated = staged.excluding("s:c", "crashed")
    assert isolated.excluded == (("s:c", "crashed"),) and pickle.loads(pickle.dumps(isolated)) == isolated
    assert [i["unit"] for i in first.inputs()] == ["s:a", "s:b"] and first.inputs()[0]["file"] == "/nowhere/a.bin"
    plain = ShardPlan(0, first.units)
    assert plain == first and plain.unit_ids() == first.unit_ids() and hash(plain) == hash(first)
