"""Issue 11 item 5: ``LeRobotSource.unit_listing()`` holds the episode index column-wise and makes each unit on
access; it equals the units (and listing problems) of the row-dict algorithm it replaced, element by element."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from motiondata.sources.base import error_unit, listing_problem
from motiondata.sources.lerobot import LeRobotSource
from motiondata.sources.lerobot_listing import EpisodeListing, StringLists
from tests.factories_lerobot import TOP, V3_EPISODES, write_lerobot_v3, write_lerobot_v21


# ------------------------------------------------------------------------- the algorithm before issue 11 item 5
def _reference_rows(src: LeRobotSource) -> list[dict]:
    if not src.is_v3:
        file = src._file("meta/episodes.jsonl")
        with open(file, encoding="utf-8") as fh:
            return [dict(json.loads(line), _meta_file=file) for line in fh if line.strip()]
    folder = src._file("meta/episodes")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".parquet"))
    wanted = {"episode_index", "length", "tasks", "dataset_from_index", "dataset_to_index",
              "data/chunk_index", "data/file_index"}
    for key in src.camera_keys():
        wanted |= {f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")}
    rows = []
    for file in files:
        names = pq.read_schema(file).names
        rows += [dict(row, _meta_file=file) for row in pq.read_table(file, columns=[n for n in names
                                                                                    if n in wanted]).to_pylist()]
    return rows


def reference_units(src: LeRobotSource) -> tuple[list[dict], list[dict]]:
    """``units()`` and ``listing_problems`` as the reader computed them from row dicts (``to_pylist``)."""
    rows, cameras, problems = _reference_rows(src), src.camera_keys(), []
    units, seen = [], {}
    for number, row in enumerate(rows):
        index = row.get("episode_index")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            units.append(error_unit(f"episode_row_{number}", row["_meta_file"], f"episode row {number} has "
                                    f"episode_index={index!r}, not an integer; fix meta/episodes"))
        elif int(index) in seen:
            first = seen[int(index)]
            same = {k: v for k, v in row.items() if k != "_meta_file"} == {k: v for k, v in first.items()
                                                                             if k != "_meta_file"}
            reason = (f"meta/episodes lists episode_index {int(index)} more than once ("
                      f"{'identical' if same else 'differing'} rows; the first, in "
                      f"{os.path.relpath(first['_meta_file'], src.path)}, is used, this one is ignored); "
                      "remove the duplicate row")
            problems.append(listing_problem(row["_meta_file"], f"episode_{int(index):06d}", reason))
        else:
            seen[int(index)] = row
    units += [src._unit(seen[i], cameras) for i in sorted(seen) if src.episodes is None or i in src.episodes]
    return units, problems


def assert_same_as_reference(src: LeRobotSource) -> EpisodeListing:
    expected, problems = reference_units(src)
    listing = src.unit_listing()
    assert src.listing_problems == problems
    got = [listing[i] for i in range(len(listing))]
    # json.dumps tells 1 from 1.0 and True, which == does not
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert list(listing) == got and src.units() == got and src.listing_problems == problems
    assert list(listing.unit_ids()) == [u["id"] for u in expected]
    if got:
        assert listing[-1] == got[-1] and listing[1:3] == got[1:3]
    with pytest.raises(IndexError):
        listing[len(listing)]
    return listing


# -------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def v3(tmp_path_factory) -> Path:
    """Video-backed: episodes 0-1 in meta/episodes file-000, 2 in file-001, camera ``top``."""
    return write_lerobot_v3(tmp_path_factory.mktemp("v3") / "ds", lengths=(3, 4, 2), file_groups=((0, 1), (2,)),
                            video_keys=(TOP,))


@pytest.fixture(scope="module")
def v21(tmp_path_factory) -> Path:
    return write_lerobot_v21(tmp_path_factory.mktemp("v21") / "ds", lengths=(3, 3))


def copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "ds"))


def meta(root: Path, file_index: int) -> Path:
    return root / V3_EPISODES.format(chunk_index=0, file_index=file_index)


def rewrite(path: Path, edit, schema: pa.Schema | None = None) -> None:
    """Rewrite a meta/episodes parquet through its rows (``edit`` changes the list in place)."""
    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema or pq.read_schema(path)), path)


# ------------------------------------------------------------------------------------------------------ v3.0
def test_plain_v3_with_videos(v3):
    listing = assert_same_as_reference(LeRobotSource(str(v3)))
    assert [u["id"] for u in listing] == ["episode_000000", "episode_000001", "episode_000002"]
    assert set(listing[2]["videos"]) == {TOP} and listing[2]["videos"][TOP]["file"].endswith("file-001.mp4")
    src = LeRobotSource(str(v3))
    assert src.read(src.unit_listing()[1]).length == 4  # the shard task reads a listed unit as before
    assert list(pickle.loads(pickle.dumps(listing))) == list(listing)


def test_options_episodes_and_cameras(v3):
    assert_same_as_reference(LeRobotSource(str(v3), episodes=[2, 0, 7]))
    assert_same_as_reference(LeRobotSource(str(v3), episodes=[]))
    assert_same_as_reference(LeRobotSource(str(v3), cameras=["top"], tolerance_s=0.01))


def test_duplicated_rows_identical_and_differing(v3, tmp_path):
    root = copy(v3, tmp_path)
    rewrite(meta(root, 0), lambda rows: rows.append(dict(rows[1])))  # same file, identical
    first = pq.read_table(meta(root, 0)).to_pylist()[0]
    rewrite(meta(root, 1), lambda rows: rows.extend([dict(first, length=9), dict(first)]))  # across files
    listing = assert_same_as_reference(LeRobotSource(str(root)))
    assert len(listing) == 3
    src = LeRobotSource(str(root), episodes=[2])
    assert_same_as_reference(src)
    assert len(src.listing_problems) == 3  # reported whether or not the episode is selected


def test_non_integer_episode_index(v3, tmp_path):
    root = copy(v3, tmp_path)
    schema = pq.read_schema(meta(root, 1))
    floats = schema.set(schema.get_field_index("episode_index"), pa.field("episode_index", pa.float64()))
    rewrite(meta(root, 1), lambda rows: rows.append(dict(rows[0], episode_index=5.0)), floats)
    rewrite(meta(root, 0), lambda rows: rows.append(dict(rows[0], episode_index=None)))  # a null in an int column
    listing = assert_same_as_reference(LeRobotSource(str(root)))
    assert [u["id"] for u in listing if u.get("error")] == ["episode_row_2", "episode_row_3", "episode_row_4"]
    strings = schema.set(schema.get_field_index("episode_index"), pa.field("episode_index", pa.string()))
    rewrite(meta(root, 1), lambda rows: [r.update(episode_index=str(int(r["episode_index"]))) for r in rows],
            strings)
    assert_same_as_reference(LeRobotSource(str(root)))


def test_bad_metadata_rows_and_missing_columns(v3, tmp_path):
    root = copy(v3, tmp_path)
    rewrite(meta(root, 0), lambda rows: rows[1].update(length=99, tasks=None))  # length disagrees, no tasks
    table = pq.read_table(meta(root, 1))
    pq.write_table(table.drop_columns(["data/file_index", "dataset_to_index", "length"]), meta(root, 1))
    listing = assert_same_as_reference(LeRobotSource(str(root)))
    assert "disagrees" in listing[1]["error"] and "KeyError" in listing[2]["error"]


def test_unreadable_index_is_one_error_unit(v3, tmp_path):
    root = copy(v3, tmp_path)
    meta(root, 1).write_bytes(b"not parquet")
    (unit,) = LeRobotSource(str(root)).unit_listing()
    assert "cannot read episodes parquet" in unit["error"]
    (unit,) = LeRobotSource(str(root), cameras=["side"]).unit_listing()
    assert "cameras ['side']" in unit["error"]


def test_empty_index_file_and_uint64_index(v3, tmp_path):
    root = copy(v3, tmp_path)
    pq.write_table(pq.read_table(meta(root, 1)).slice(0, 0), meta(root, 1))
    table = pq.read_table(meta(root, 0))
    where = table.schema.get_field_index("episode_index")
    pq.write_table(table.set_column(where, "episode_index", pa.array([2 ** 64 - 1, 1], pa.uint64())), meta(root, 0))
    listing = assert_same_as_reference(LeRobotSource(str(root)))
    assert list(listing.unit_ids()) == ["episode_000001", "episode_18446744073709551615"]


def test_string_lists_column_matches_as_py():
    array = pa.array([["a", "b"], [], ["b"], ["c", "a", "a"]])[1:]
    assert [StringLists(array).get(i) for i in range(3)] == array.to_pylist()


# ------------------------------------------------------------------------------------------------------ v2.1
def test_v21_regular_and_odd_lines(v21, tmp_path):
    root = copy(v21, tmp_path)
    assert_same_as_reference(LeRobotSource(str(root)))
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    odd = [{"episode_index": "1", "length": 3}, {"length": 3}, {"episode_index": True, "length": 3},
           {"episode_index": 7, "tasks": "one task", "length": 2}, {"episode_index": 8, "length": 2, "x": [1]},
           {"episode_index": 9}, {"episode_index": 2 ** 70, "length": 1}, {"episode_index": -3, "length": 1},
           {"episode_index": 4, "length": 2.0, "tasks": [1, None]}, {"episode_index": 1, "length": 3}]
    text = "\n".join(lines + ["", lines[0]] + [json.dumps(o) for o in odd]) + "\n\n"
    (root / "meta/episodes.jsonl").write_text(text)
    listing = assert_same_as_reference(LeRobotSource(str(root)))
    assert "episode_1180591620717411303424" in listing.unit_ids()
    assert_same_as_reference(LeRobotSource(str(root), episodes=[1, 9, -3]))


def test_v21_bad_json_line(v21, tmp_path):
    root = copy(v21, tmp_path)
    (root / "meta/episodes.jsonl").write_text('{"episode_index": 0, "length": 3}\n\n{oops\n')
    (unit,) = LeRobotSource(str(root)).unit_listing()
    assert "line 3 is not JSON" in unit["error"]


# ---------------------------------------------------------------------------------------------------- memory
def write_index(root: Path, template: Path, count: int) -> Path:
    """``template``'s info.json with one meta/episodes parquet of ``count`` episodes (no data or videos)."""
    (root / "meta").mkdir(parents=True)
    shutil.copy(template / "meta/info.json", root / "meta/info.json")
    first = pq.read_table(meta(template, 0))
    index = np.arange(count)
    columns = {name: np.resize(first.column(name).to_numpy(zero_copy_only=False), count)
               for name in first.column_names if name not in ("tasks", "episode_index", "stats/action/mean")}
    columns.update(episode_index=index, dataset_from_index=3 * index, dataset_to_index=3 * index + 3,
                   length=np.full(count, 3), tasks=pa.array([["pick"]] * count))
    meta(root, 0).parent.mkdir(parents=True)
    pq.write_table(pa.table(columns), meta(root, 0))
    return root


def held_bytes(root: Path) -> tuple[int, EpisodeListing]:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        listing = LeRobotSource(str(root)).unit_listing()
        return tracemalloc.get_traced_memory()[0] - before, listing
    finally:
        tracemalloc.stop()


def test_listing_holds_no_object_per_episode(v3, tmp_path):
    small, _ = held_bytes(write_index(tmp_path / "small", v3, 5_000))
    large, listing = held_bytes(write_index(tmp_path / "large", v3, 25_000))
    per_unit = (large - small) / 20_000
    assert per_unit < 100, per_unit  # numpy columns (~45 B a unit here); a unit dict alone is ~1-2 KB
    for block in listing.index.blocks:
        assert not block.extra
        assert all(isinstance(get.__self__, (np.ndarray, StringLists)) for get in block.columns.values())
    assert listing[24_999]["id"] == "episode_024999" and listing[24_999]["length"] == 3


# --------------------------------------------------------------------------------------------------- planning
class UnitsOnly:
    """The source as the planner saw it before: its ``units()`` list."""

    def __init__(self, source: LeRobotSource):
        self.source = source

    def units(self) -> list[dict]:
        units = self.source.units()
        self.listing_problems = self.source.listing_problems
        return units


def test_plans_through_the_listing_equal_plans_through_units(v3, tmp_path, monkeypatch):
    from motiondata.pipeline import plan
    from motiondata.pipeline.spec import parse_spec

    root = copy(v3, tmp_path)
    rewrite(meta(root, 0), lambda rows: rows.extend([dict(rows[1]), dict(rows[0], episode_index=None)]))
    spec = parse_spec({"name": "t", "sources": [{"kind": "lerobot", "path": str(root), "name": "lr"}],
                       "shards": {"episodes_per_shard": 2}})
    recorded = {1: ["lr:episode_000002"]}
    compact = [plan.plan_shards(spec, r) for r in ({}, recorded)]
    original = plan.open_spec_source
    monkeypatch.setattr(plan, "open_spec_source", lambda spec, index: UnitsOnly(original(spec, index)))
    listed = [plan.plan_shards(spec, r) for r in ({}, recorded)]
    for (plans, errors), (want, want_errors) in zip(compact, listed):
        assert [(p.index, p.units) for p in plans] == [(p.index, p.units) for p in want]
        assert errors == want_errors and len(errors) == 1
    assert compact[1][0][1].units[0]["fingerprint"] is not None  # a recorded unit is fingerprinted
