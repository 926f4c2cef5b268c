"""Issue 9 item 2 (planning side): two units that map to one episode id are caught at planning."""

from __future__ import annotations

import json
from pathlib import Path

from motiondata.pipeline.plan import MAX_EPISODE_ID, episode_id_for, plan_shards, unique_units
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout
from tests.factories_pipeline import write_libero_hdf5, write_spec
from tests.reliability.accounting import assert_accounted


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in layout.errors_file(out).read_text().splitlines()]


def test_source_and_file_names_that_join_to_one_id_store_the_first_and_record_the_other(tmp_path):
    folder = tmp_path / "lib"
    folder.mkdir()
    write_libero_hdf5(folder / "x.hdf5", episodes=2, steps=8, size=8, seed=1)  # lib + x_demo_0 -> lib_x_demo_0
    write_libero_hdf5(tmp_path / "other.hdf5", episodes=2, steps=8, size=8, seed=2)  # lib_x + demo_0 -> lib_x_demo_0
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(folder), "name": "lib"},
                                               {"kind": "hdf5", "path": str(tmp_path / "other.hdf5"), "name": "lib_x"}])
    out = tmp_path / "out"
    result = run_job(load_spec(spec), out, executor="local", show_progress=False)
    counts = assert_accounted(out)
    assert counts["stored"] == 2 and counts["plan_records"] == 2 and counts["units"] == 4
    clashes = [e for e in _errors(out) if e["stage"] == "plan"]
    assert {e["unit"] for e in clashes} == {"lib_x:demo_0", "lib_x:demo_1"}
    assert all("clashes with unit lib:x_demo_" in e["reason"] and "rename" in e["reason"] for e in clashes)
    manifest = json.loads(layout.shard_manifest(out, 0).read_text())
    assert {i["unit"] for i in manifest["inputs"]} == {"lib:x_demo_0", "lib:x_demo_1"}  # the first source won
    assert result.complete and result.num_episodes == 2


def test_a_duplicated_lerobot_episodes_row_is_stored_once_and_recorded_once(tmp_path):
    from tests.factories_lerobot import write_lerobot_v21

    root = write_lerobot_v21(tmp_path / "lr", lengths=(5, 6))
    rows = (root / "meta/episodes.jsonl").read_text().splitlines()
    (root / "meta/episodes.jsonl").write_text("\n".join(rows + [rows[1]]) + "\n")
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "lerobot", "path": str(root), "name": "lr"}],
                      window=4, stride=2, size=[16, 16])
    out = tmp_path / "out"
    run_job(load_spec(spec), out, executor="local", show_progress=False)
    counts = assert_accounted(out)
    assert counts["stored"] == 2 and counts["plan_records"] == 1
    (record,) = [e for e in _errors(out) if e["stage"] == "plan"]
    assert record["unit"] == "lr:episode_000001" and record["episode"] == "lr_episode_000001"


def _entry(key: str, episode: str) -> dict:
    return {"source": 0, "unit": {"id": key.split(":")[1], "file": f"/data/{key}.hdf5"}, "key": key,
            "episode": episode, "fingerprint": {"unit": "x", "files": {}}}


def test_units_recorded_in_the_store_win_a_clash_and_a_unit_listed_twice_is_recorded():
    entries = [_entry("lib_x:demo_0", "lib_x_demo_0"), _entry("lib:x_demo_0", "lib_x_demo_0"),
               _entry("lib:y", "lib_y"), _entry("lib:y", "lib_y")]
    kept, errors = unique_units(entries)
    assert [e["key"] for e in kept] == ["lib_x:demo_0", "lib:y"]
    assert [(e["unit"], "twice" in e["reason"]) for e in errors] == [("lib:x_demo_0", False), ("lib:y", True)]
    kept, errors = unique_units(entries, recorded={"lib:x_demo_0"})
    assert [e["key"] for e in kept] == ["lib:x_demo_0", "lib:y"]
    assert errors[0]["unit"] == "lib_x:demo_0" and "clashes with unit lib:x_demo_0" in errors[0]["reason"]


def test_long_episode_ids_are_shortened_deterministically_and_stay_unique():
    a, b = episode_id_for("src", "x" * 300), episode_id_for("src", "x" * 299 + "y")
    assert len(a) == len(b) == MAX_EPISODE_ID and a != b and a == episode_id_for("src", "x" * 300)
    assert episode_id_for("src", "demo_0") == "src_demo_0"


def test_plans_fill_free_indices_and_pin_recorded_units(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    for name in ("a", "b", "c"):
        write_libero_hdf5(data / f"{name}.hdf5", episodes=1, steps=6, size=8)
    spec = load_spec(write_spec(tmp_path / "s.yaml", [{"kind": "hdf5", "path": str(data), "name": "s"}], per_shard=1))
    plans, _ = plan_shards(spec)
    assert [p.unit_ids() for p in plans] == [["s:a_demo_0"], ["s:b_demo_0"], ["s:c_demo_0"]]
    plans, _ = plan_shards(spec, recorded={1: ["s:b_demo_0"], 3: ["s:gone"]})
    assert [(p.index, p.unit_ids()) for p in plans] == [(0, ["s:a_demo_0"]), (1, ["s:b_demo_0"]), (2, ["s:c_demo_0"]),
                                                        (3, [])]
