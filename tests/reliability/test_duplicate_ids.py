"""Issue 9 item 2, reader half: a reader's unit list holds every episode once, with ids unique in the source.

A duplicated LeRobot ``meta/episodes`` row is listed once and reported in ``source.listing_problems`` (the
planner turns each entry into an error record); HDF5 demo names that clean to the same id get distinct ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from motiondata.sources import open_source
from motiondata.sources.base import listing_problems
from tests.factories_lerobot import TOP, V3_EPISODES, write_lerobot_v3, write_lerobot_v21
from tests.factories_sources import write_libero_hdf5


@pytest.fixture(scope="module")
def v3_two_files(tmp_path_factory) -> Path:
    """Episode 0 in meta/episodes file-000, episode 1 in file-001."""
    return write_lerobot_v3(tmp_path_factory.mktemp("v3") / "ds", lengths=(3, 4), file_groups=((0,), (1,)),
                            video_keys=(TOP,))


def episodes_file(root: Path, file_index: int) -> Path:
    return root / V3_EPISODES.format(chunk_index=0, file_index=file_index)


def append_rows(path: Path, rows: list[dict]) -> None:
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist(rows, schema=table.schema)]), path)


def test_duplicated_v3_row_is_listed_once_and_reported(v3_two_files, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(v3_two_files, root)
    row = pq.read_table(episodes_file(root, 1)).to_pylist()[0]
    append_rows(episodes_file(root, 1), [row])  # same file, identical row
    src = open_source("lerobot", str(root))
    units = src.units()
    assert [u["id"] for u in units] == ["episode_000000", "episode_000001"]
    (problem,) = src.listing_problems
    assert problem["file"] == str(episodes_file(root, 1)) and problem["episode"] == "episode_000001"
    assert "episode_index 1 more than once" in problem["reason"] and "identical" in problem["reason"]
    assert "remove the duplicate row" in problem["reason"]
    assert src.read(units[1]).length == 4
    assert len(src.units()) == 2 and len(src.listing_problems) == 1  # listing again does not pile up


def test_duplicate_across_episode_files_keeps_the_first(v3_two_files, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(v3_two_files, root)
    row = dict(pq.read_table(episodes_file(root, 0)).to_pylist()[0], length=99)  # disagrees with the first
    append_rows(episodes_file(root, 1), [row])
    src = open_source("lerobot", str(root))
    units = src.units()
    assert [(u["id"], u["length"]) for u in units] == [("episode_000000", 3), ("episode_000001", 4)]
    (problem,) = listing_problems(src)
    assert problem["file"] == str(episodes_file(root, 1)) and problem["episode"] == "episode_000000"
    assert "differing" in problem["reason"] and "chunk-000/file-000.parquet" in problem["reason"]
    assert [u["id"] for u in open_source("lerobot", str(root), episodes=[0]).units()] == ["episode_000000"]


@pytest.fixture(scope="module")
def v21(tmp_path_factory) -> Path:
    return write_lerobot_v21(tmp_path_factory.mktemp("v21") / "ds", lengths=(3, 3))


def test_duplicated_v21_line_and_bad_indices(v21, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(v21, root)
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    extra = [lines[0], json.dumps({"episode_index": "1", "length": 3}), json.dumps({"length": 3})]
    (root / "meta/episodes.jsonl").write_text("\n".join(lines + extra) + "\n")
    src = open_source("lerobot", str(root))
    units = src.units()
    ids = [u["id"] for u in units]
    assert len(ids) == len(set(ids)) == 4
    assert [u["id"] for u in units if not u.get("error")] == ["episode_000000", "episode_000001"]
    bad = [u for u in units if u.get("error")]
    assert all("not an integer" in u["error"] and u["file"] == str(root / "meta/episodes.jsonl") for u in bad)
    assert [p["episode"] for p in src.listing_problems] == ["episode_000000"]


def test_sources_without_problems_report_none(tmp_path):
    path = write_libero_hdf5(tmp_path / "a.hdf5", demos=2, steps=3, size=8)
    src = open_source("hdf5", str(path))
    src.units()
    assert listing_problems(src) == []


def rename_demo(path: Path, old: str, new: str) -> None:
    with h5py.File(path, "r+") as f:
        f.move(f"data/{old}", f"data/{new}")


def test_hdf5_demo_names_that_clean_to_one_id_stay_distinct(tmp_path):
    path = write_libero_hdf5(tmp_path / "a.hdf5", demos=3, steps=3, size=8)
    rename_demo(path, "demo_2", "demo 1")  # safe_id("demo 1") == "demo_1"
    src = open_source("hdf5", str(path))
    units = src.units()
    ids = [u["id"] for u in units]
    assert len(set(ids)) == 3 and "demo_0" in ids and "demo_1" not in ids
    lengths = {u["demo"]: src.read(u).length for u in units}
    assert lengths == {"demo_0": 3, "demo_1": 4, "demo 1": 5}  # each id reads its own demo


def test_hdf5_file_and_demo_names_that_concatenate_alike_stay_distinct(tmp_path):
    folder = tmp_path / "lib"
    folder.mkdir()
    write_libero_hdf5(folder / "x.hdf5", demos=1, steps=3, size=8)
    other = write_libero_hdf5(folder / "x_demo.hdf5", demos=1, steps=4, size=8, seed=3)
    rename_demo(other, "demo_0", "0")  # x + demo_0 and x_demo + 0 both clean to x_demo_0
    src = open_source("hdf5", str(folder))
    units = src.units()
    assert len({u["id"] for u in units}) == 2 and all(u["id"].startswith("x_demo_0_") for u in units)
    assert sorted(src.read(u).length for u in units) == [3, 4]
    assert [u["id"] for u in units] == [u["id"] for u in open_source("hdf5", str(folder)).units()]  # stable


def test_build_stores_a_duplicated_episode_once_and_records_the_copy(v3_two_files, tmp_path):
    from motiondata.pipeline.runner import run_job
    from motiondata.pipeline.spec import load_spec
    from motiondata.store import layout
    from tests.factories_pipeline import write_spec

    root = tmp_path / "ds"
    shutil.copytree(v3_two_files, root)
    append_rows(episodes_file(root, 1), pq.read_table(episodes_file(root, 1)).to_pylist())
    spec = write_spec(tmp_path / "spec.yaml", [{"kind": "lerobot", "path": str(root), "name": "lr"}],
                      window=2, stride=2, size=[16, 16])
    out = tmp_path / "out"
    run_job(load_spec(spec), out, executor="local", show_progress=False)
    stored = sorted(p.name for p in layout.zarr_store(out).iterdir() if p.is_dir())
    assert stored == ["lr_episode_000000", "lr_episode_000001"]
    records = [json.loads(line) for line in layout.errors_file(out).read_text().splitlines()]
    assert [(r["episode"], r["file"], r["stage"]) for r in records] == [
        ("lr_episode_000001", str(episodes_file(root, 1)), "plan")]
    assert np.isfinite(json.loads(layout.stats_file(out).read_text())["norm_stats"]["actions"]["mean"]).all()
