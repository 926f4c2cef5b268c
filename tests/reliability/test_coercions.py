"""Issue 9 item 11: silent coercions become records naming file, episode and field.

Every case writes a real tiny input with the project's factories (h5py, zarr, pyarrow), breaks it the way
the world does, and checks that the reader raises a SourceError (what the shard builder turns into an error
record) instead of casting, clipping or dropping data; one end-to-end build checks the records land in
``errors.jsonl`` and that every planned unit is stored or recorded.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from motiondata.errors import SourceError, SpecError
from motiondata.sources import open_source
from tests.factories_lerobot import TOP, V3_DATA, write_lerobot_v3
from tests.factories_sources import write_libero_hdf5, write_replay_buffer

LENGTHS = (5, 7, 8)  # replay buffer episodes; img chunks hold 4 rows, other arrays one 100-row chunk


def read_error(src, unit) -> SourceError:
    with pytest.raises(SourceError) as info:
        src.read(unit)
    return info.value


def by_id(units: list[dict]) -> dict[str, dict]:
    return {u["id"]: u for u in units}


# ------------------------------------------------------------------------------------------------- HDF5
def replace_dataset(path: Path, name: str, data, **kwargs) -> None:
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, data=data, **kwargs)


@pytest.fixture
def libero(tmp_path) -> Path:
    return write_libero_hdf5(tmp_path / "KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5", demos=3, steps=4, size=8)


@pytest.mark.parametrize("text", [np.array([[b"0.1"] * 7] * 5), np.array([["0.1"] * 7] * 5, dtype=object)],
                         ids=["fixed-bytes", "vlen-str"])
def test_hdf5_numeric_strings_as_actions_are_a_record(libero, text):
    dtype = h5py.string_dtype() if text.dtype == object else None
    replace_dataset(libero, "data/demo_1/actions", text, dtype=dtype)
    src = open_source("hdf5", str(libero))
    units = by_id(src.units())
    err = read_error(src, units["demo_1"])
    assert err.file == str(libero) and err.episode == "demo_1"
    assert "'data/demo_1/actions'" in err.reason and "text" in err.reason and "never casts" in err.reason
    assert src.read(units["demo_0"]).actions.dtype == np.float32  # neighbours unaffected


def test_hdf5_text_proprio_is_a_record(libero):
    replace_dataset(libero, "data/demo_0/obs/joint_states", np.array([[b"1"] * 7] * 4))
    err = read_error(open_source("hdf5", str(libero)), by_id(open_source("hdf5", str(libero)).units())["demo_0"])
    assert "'data/demo_0/obs/joint_states'" in err.reason and "text" in err.reason


def test_hdf5_values_beyond_max_abs_are_a_record_and_the_threshold_is_an_option(libero):
    with h5py.File(libero, "r+") as f:
        f["data/demo_2/actions"][3, 5] = -2.5e7
    src = open_source("hdf5", str(libero))
    err = read_error(src, by_id(src.units())["demo_2"])
    assert err.episode == "demo_2" and "'data/demo_2/actions'" in err.reason
    assert "max |x| = 2.5e+07 at step 3, dim 5" in err.reason and "max_abs" in err.reason
    relaxed = open_source("hdf5", str(libero), max_abs=1e9)
    assert relaxed.read(by_id(relaxed.units())["demo_2"]).actions[3, 5] == np.float32(-2.5e7)


def test_hdf5_values_beyond_float32_are_a_record_even_without_a_limit(libero):
    with h5py.File(libero, "r+") as f:
        f["data/demo_0/robot_states"][0, 0] = 1e39  # float64 in the file; inf once cast to float32
        f["data/demo_0/obs/ee_pos"][1, 2] = 4e6
    replace_dataset(libero, "data/demo_1/obs/gripper_states", np.full((5, 2), 3e38))
    src = open_source("hdf5", str(libero), max_abs=None)
    units = by_id(src.units())
    # demo_0 has LIBERO's proprio keys, so robot_states is unused; ee_pos at 4e6 passes with no limit
    assert src.read(units["demo_0"]).ee_pose[1, 2] == np.float32(4e6)
    assert src.read(units["demo_1"]).gripper.max() == np.float32(3e38)
    with h5py.File(libero, "r+") as f:
        f["data/demo_2/obs/ee_pos"][0, 0] = -1e300
    err = read_error(src, units["demo_2"])
    assert "'data/demo_2/obs/ee_pos'" in err.reason and "beyond float32" in err.reason


@pytest.mark.parametrize("value", [-1, 0, "1e9", True])
def test_max_abs_option_is_checked(libero, value):
    with pytest.raises(SpecError, match="max_abs"):
        open_source("hdf5", str(libero), max_abs=value)


# ---------------------------------------------------------------------------------------------- LeRobot
@pytest.fixture(scope="module")
def lerobot_v3(tmp_path_factory) -> Path:
    return write_lerobot_v3(tmp_path_factory.mktemp("lerobot") / "ds", lengths=(3, 4), file_groups=((0, 1),),
                            video_keys=(TOP,))


def copy_with_info(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    info = json.loads((dst / "meta/info.json").read_text())
    info.update(changes)
    (dst / "meta/info.json").write_text(json.dumps(info))
    return dst


def replace_column(path: Path, name: str, values: pa.Array) -> None:
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index(name), name, values), path)


def test_lerobot_fps_disagreeing_with_timestamps_is_a_record(lerobot_v3, tmp_path):
    root = copy_with_info(lerobot_v3, tmp_path / "fast", fps=20)  # timestamps are 0.1 s apart
    src = open_source("lerobot", str(root))
    for unit in src.units():
        err = read_error(src, unit)
        assert err.episode == unit["id"] and err.file.endswith("file-000.parquet")
        assert "'timestamp'" in err.reason and "fps=20" in err.reason and "10 fps" in err.reason
    close = open_source("lerobot", str(copy_with_info(lerobot_v3, tmp_path / "close", fps=10.05)))
    assert close.read(close.units()[1]).length == 4  # 0.5 % off is within the 1 % tolerance


@pytest.mark.parametrize("fps", [True, "30", None, float("nan")], ids=["bool", "string", "null", "nan"])
def test_lerobot_non_numeric_fps_is_a_record_naming_info_json(lerobot_v3, tmp_path, fps):
    root = tmp_path / "ds"
    shutil.copytree(lerobot_v3, root)
    text = (root / "meta/info.json").read_text()
    info = json.loads(text)
    info["fps"] = fps
    (root / "meta/info.json").write_text(json.dumps(info))  # nan is written as NaN, which json reads back
    src = open_source("lerobot", str(root))
    (unit,) = src.units()
    err = read_error(src, unit)
    assert err.file == str(root / "meta/info.json") and "fps=" in err.reason and "positive number" in err.reason


def test_lerobot_huge_and_text_vectors_are_records(lerobot_v3, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(lerobot_v3, root)
    data = root / V3_DATA.format(chunk_index=0, file_index=0)
    state = np.zeros((7, 3))
    state[5, 1] = 3e6  # episode 1, frame 2
    replace_column(data, "observation.state", pa.array(state.tolist(), type=pa.list_(pa.float64())))
    replace_column(data, "action", pa.array([["0.5", "0.1"]] * 7, type=pa.list_(pa.string())))
    src = open_source("lerobot", str(root), action_key=None)
    units = src.units()
    assert src.read(units[0]).state.max() == 0
    err = read_error(src, units[1])
    assert err.episode == "episode_000001" and "'observation.state'" in err.reason
    assert "max |x| = 3e+06 at step 2, dim 1" in err.reason
    with_actions = open_source("lerobot", str(root), state_key=None)
    err = read_error(with_actions, with_actions.units()[0])
    assert "'action'" in err.reason and "text" in err.reason


# ------------------------------------------------------------------------------------------ replay buffer
@pytest.fixture
def buffer(tmp_path) -> Path:
    return write_replay_buffer(tmp_path / "pusht.zarr", LENGTHS)


def set_episode_ends(path: Path, ends: np.ndarray) -> None:
    meta = zarr.open_group(str(path / "meta"), mode="r+", zarr_format=2)
    del meta["episode_ends"]
    meta.create_array("episode_ends", data=ends, chunks=ends.shape, compressors=None)


def test_rows_after_the_last_episode_end_are_a_record(buffer):
    set_episode_ends(buffer, np.array([5, 12, 16]))
    src = open_source("replay_buffer", str(buffer))
    units = src.units()
    assert [u["id"] for u in units] == ["episode_000000", "episode_000001", "episode_000002", "rows_16_20"]
    assert src.read(units[2]).length == 4
    err = read_error(src, units[3])
    assert err.file == str(buffer) and err.episode == "rows_16_20"
    assert "rows 16..19 belong to no episode" in err.reason and "data/action (20)" in err.reason


@pytest.mark.parametrize("ends, message", [
    (np.array([5.0, 12.5, 20.0]), "dtype float64"),
    (np.array([[5], [12], [20]]), r"shape \(3, 1\), not 1-D"),
    (np.array([5, 12, 8, 20]), r"decreases at index 2 \(12 -> 8\)"),
    (np.array([-1, 20]), r"decreases at index 0 \(0 -> -1\)"),
], ids=["float", "2-D", "decreasing", "negative"])
def test_bad_episode_ends_are_a_clear_record(buffer, ends, message):
    set_episode_ends(buffer, ends)
    src = open_source("replay_buffer", str(buffer))
    (unit,) = src.units()
    err = read_error(src, unit)
    assert err.file == str(buffer)
    assert "meta/episode_ends" in err.reason and "int64" in err.reason
    assert re.search(message, err.reason), err.reason


def test_deleted_chunk_makes_the_episodes_it_holds_records(buffer):
    (buffer / "data/img/1.0.0.0").unlink()  # rows 4..7: the end of episode 0 and the start of episode 1
    src = open_source("replay_buffer", str(buffer))
    units = src.units()
    for unit in units[:2]:
        err = read_error(src, unit)
        assert err.episode == unit["id"] and "field data/img: chunk(s) 1.0.0.0" in err.reason
        assert "missing from the store" in err.reason and "fill value" in err.reason
    assert src.read(units[2]).length == 8
    # zarr itself serves the hole as zeros: the reader's check is what catches it
    assert not zarr.open_group(str(buffer), mode="r")["data/img"][4:8].any()


def test_deleted_only_chunk_of_an_array(buffer):
    (buffer / "data/action/0.0").unlink()
    strict = open_source("replay_buffer", str(buffer), missing_chunks="error")
    for unit in strict.units():
        assert "field data/action: chunk(s) 0.0" in read_error(strict, unit).reason
    # "auto" cannot tell an array never written (all fill, zarr 3's write_empty_chunks=False) from one whose
    # every chunk was deleted: it reads fill value with a warning (documented); "fill" is zarr's behaviour
    auto = open_source("replay_buffer", str(buffer))
    assert not auto.read(auto.units()[0]).actions.any()
    with pytest.raises(SpecError, match="missing_chunks"):
        open_source("replay_buffer", str(buffer), missing_chunks="ignore")


def test_deleted_chunk_in_a_zarr_v3_buffer(tmp_path):
    path = tmp_path / "v3.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    rng = np.random.default_rng(0)
    root.create_array("data/img", data=rng.integers(0, 255, (12, 4, 4, 3), dtype=np.uint8), chunks=(3, 4, 4, 3))
    root.create_array("data/action", data=rng.normal(size=(12, 2)).astype(np.float32), chunks=(4, 2))
    root.create_array("meta/episode_ends", data=np.array([6, 12]))
    (path / "data/action/c/2/0").unlink()  # rows 8..11, inside episode 1
    src = open_source("replay_buffer", str(path))
    units = src.units()
    assert src.read(units[0]).length == 6
    assert "field data/action: chunk(s) c/2/0" in read_error(src, units[1]).reason


def test_replay_buffer_text_and_huge_values(tmp_path):
    path = write_replay_buffer(tmp_path / "t.zarr", (3, 3), extra={"agent_pos": np.full((6, 2), 5e6)})
    src = open_source("replay_buffer", str(path), state_key="agent_pos")
    err = read_error(src, src.units()[0])
    assert "'data/agent_pos'" in err.reason and "max |x| = 5e+06" in err.reason
    relaxed = open_source("replay_buffer", str(path), state_key="agent_pos", max_abs=1e7)
    assert relaxed.read(relaxed.units()[0]).state.max() == np.float32(5e6)
    text = write_replay_buffer(tmp_path / "s.zarr", (3, 3), extra={"agent_pos": np.full((6, 2), "0.1")})
    src = open_source("replay_buffer", str(text), state_key="agent_pos")
    assert "text" in read_error(src, src.units()[1]).reason


# ------------------------------------------------------------------------------------------------ a build
def test_build_turns_each_coercion_into_one_record_and_keeps_the_rest(tmp_path):
    from motiondata.pipeline.plan import plan_shards
    from motiondata.pipeline.runner import run_job
    from motiondata.pipeline.spec import load_spec
    from motiondata.store import layout
    from tests.factories_pipeline import write_libero_hdf5 as write_pipeline_hdf5, write_spec

    hdf5 = write_pipeline_hdf5(tmp_path / "lib.hdf5", episodes=3, steps=8, size=24)
    replace_dataset(hdf5, "data/demo_1/actions", np.array([[b"0.1"] * 7] * 9))
    with h5py.File(hdf5, "r+") as f:
        f["data/demo_2/actions"][4, 0] = 1e8
    same_layout = {"action": np.full((24, 7), 0.1, np.float32), "state": np.full((24, 9), 0.2, np.float32)}
    zbuf = write_replay_buffer(tmp_path / "dp.zarr", (8, 8, 8), extra=same_layout)  # one stats layout per field
    set_episode_ends(zbuf, np.array([8, 16]))  # rows 16..23 after the last end
    (zbuf / "data/img/3.0.0.0").unlink()  # rows 12..15 of episode 1
    spec_path = write_spec(tmp_path / "spec.yaml", [
        {"kind": "hdf5", "path": str(hdf5), "name": "lib"},
        {"kind": "hdf5", "path": str(hdf5), "name": "relaxed", "options": {"max_abs": 1e9}},
        {"kind": "replay_buffer", "path": str(zbuf), "name": "dp"},
    ], window=4, stride=4, per_shard=3)
    spec = load_spec(spec_path)
    out = tmp_path / "out"
    run_job(spec, out, executor="local", show_progress=False)
    records = [json.loads(line) for line in layout.errors_file(out).read_text().splitlines()]
    reasons = {r["episode"]: r["reason"] for r in records}
    assert set(reasons) == {"lib_demo_1", "lib_demo_2", "relaxed_demo_1", "dp_episode_000001", "dp_rows_16_24"}
    assert "'data/demo_1/actions' holds text" in reasons["lib_demo_1"]
    assert "max |x| = 1e+08" in reasons["lib_demo_2"] and "max_abs" in reasons["lib_demo_2"]
    assert "chunk(s) 3.0.0.0" in reasons["dp_episode_000001"]
    assert "rows 16..23 belong to no episode" in reasons["dp_rows_16_24"]
    assert all(r["file"] in (str(hdf5), str(zbuf)) for r in records)
    stored = sorted(p.name for p in layout.zarr_store(out).iterdir() if p.is_dir())
    assert stored == ["dp_episode_000000", "lib_demo_0", "relaxed_demo_0", "relaxed_demo_2"]
    plans, plan_errors = plan_shards(spec)
    assert not plan_errors and sum(len(p.units) for p in plans) == len(stored) + len(records)  # accounted once
