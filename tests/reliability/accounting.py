"""``assert_accounted(out)``: from the store alone, every planned unit is stored or recorded exactly once.

Checks, for a built store:
- every shard manifest's ``inputs`` (its planned units) are each either stored (their episode is in the
  manifest's ``episodes``) or recorded (exactly one error record of that manifest names the unit), never
  both, and no unit is planned into two shards;
- no sample key appears twice across shards; every sample's episode is one the shard stored;
- the zarr store holds exactly the stored episodes (no group without a shard, none missing), and no
  temporary group or file is left behind;
- ``errors.jsonl`` is exactly the shards' records plus the ``plan`` records;
- ``manifest.json`` lists exactly the shards on disk, with counts that add up; a complete job has no gaps.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from motiondata.store import layout
from motiondata.store.episodes_zarr import list_episodes


def _shard_manifests(out: Path) -> dict[int, dict[str, Any]]:
    folder = out / layout.SHARDS_DIR
    found = {}
    for path in sorted(folder.glob("shard-[0-9][0-9][0-9][0-9][0-9][0-9].json")):
        found[int(path.stem.split("-")[1])] = json.loads(path.read_text())
    return found


def _check_shard(index: int, manifest: dict[str, Any], owner: dict[str, int]) -> None:
    inputs = manifest["inputs"]
    episode_of = {i["unit"]: i["episode"] for i in inputs}
    assert len(episode_of) == len(inputs), f"shard {index}: a unit is planned twice"
    recorded = Counter(e.get("unit") for e in manifest["errors"])
    stray = sorted(str(u) for u in recorded if u not in episode_of)
    assert not stray, f"shard {index}: error records of units it did not plan: {stray}"
    stored = set(manifest["episodes"])
    assert stored <= set(episode_of.values()), f"shard {index}: stores episodes it did not plan"
    for unit, episode in episode_of.items():
        assert unit not in owner, f"unit {unit} planned in shard {owner[unit]} and shard {index}"
        owner[unit] = index
        count = (episode in stored) + recorded[unit]
        assert count == 1, (f"shard {index}: unit {unit} is stored {int(episode in stored)}x and recorded "
                            f"{recorded[unit]}x (expected exactly once in all)")
    assert {s["episode"] for s in manifest["samples"]} <= stored, f"shard {index}: samples of unstored episodes"


def _check_job(out: Path, manifests: dict[int, dict[str, Any]], errors: list[dict], stored: set[str]) -> dict:
    job = json.loads(layout.job_manifest(out).read_text())
    listed = [int(s["shard"].split("-")[1]) for s in job["shards"]]
    assert listed == sorted(manifests), f"manifest.json lists {listed}, shards on disk {sorted(manifests)}"
    if job.get("complete", True):
        assert listed == list(range(len(listed))), f"a complete job with gaps: {listed}"
    assert job["num_samples"] == sum(m["num_samples"] for m in manifests.values())
    assert job["num_episodes"] == len(stored) and job["num_errors"] == len(errors)
    return job


def assert_accounted(out: str | Path) -> dict[str, Any]:
    """Assert the store's accounting; returns ``{"units", "stored", "recorded", "plan_records", "job"}``."""
    out = Path(out)
    manifests = _shard_manifests(out)
    owner: dict[str, int] = {}
    keys: Counter = Counter()
    stored: set[str] = set()
    for index, manifest in sorted(manifests.items()):
        _check_shard(index, manifest, owner)
        keys.update(manifest["keys"])
        assert not stored & set(manifest["episodes"]), f"shard {index} stores an episode another shard stores"
        stored |= set(manifest["episodes"])
    twice = sorted(k for k, n in keys.items() if n > 1)
    assert not twice, f"sample keys stored twice: {twice[:5]}"
    groups = set(list_episodes(out))
    assert groups == stored, f"zarr orphans {sorted(groups - stored)[:5]}, missing {sorted(stored - groups)[:5]}"
    leftovers = [p.name for d in (out / layout.SHARDS_DIR, layout.zarr_store(out)) if d.is_dir()
                 for p in d.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    errors = [json.loads(line) for line in layout.errors_file(out).read_text().splitlines() if line.strip()]
    plan_records = [e for e in errors if e["stage"] == "plan"]
    expected = sorted(json.dumps(e, sort_keys=True) for m in manifests.values() for e in m["errors"])
    got = sorted(json.dumps(e, sort_keys=True) for e in errors if e["stage"] != "plan")
    assert got == expected, "errors.jsonl differs from the shard manifests' records"
    for record in plan_records:
        duplicate = any(w in record["reason"] for w in ("twice", "more than once", "duplicate"))
        assert record.get("unit") is None or record["unit"] not in owner or duplicate, record
    job = _check_job(out, manifests, errors, stored)
    return {"units": len(owner) + len({r["unit"] for r in plan_records if r.get("unit") not in owner}),
            "stored": len(stored), "recorded": len(errors), "plan_records": len(plan_records), "job": job}
