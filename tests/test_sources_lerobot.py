"""LeRobot reader: v3.0 (shared parquet + shared mp4 per camera) and v2.1 (per-episode files), corrupt inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from motiondata.errors import SourceError, SpecError
from motiondata.sources import open_source
from motiondata.sources.lerobot import LeRobotSource, camera_name, episode_row_groups
from tests.factories_lerobot import (FPS, TASKS, TOP, V3_EPISODES, WRIST, action_of, frame_ids, state_of,
                                     write_lerobot_v3, write_lerobot_v21)

V3_LENGTHS = (5, 7, 6, 4)
V2_LENGTHS = (5, 6, 4)


@pytest.fixture(scope="module")
def v3_root(tmp_path_factory) -> Path:
    return write_lerobot_v3(tmp_path_factory.mktemp("lerobot") / "v3", lengths=V3_LENGTHS)


@pytest.fixture(scope="module")
def v21_root(tmp_path_factory) -> Path:
    return write_lerobot_v21(tmp_path_factory.mktemp("lerobot") / "v21", lengths=V2_LENGTHS)


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def _edit_parquet(path: Path, edit) -> None:
    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)


def _starts(lengths) -> list[int]:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()


def _unit(src: LeRobotSource, index: int) -> dict:
    return next(u for u in src.units() if u["episode_index"] == index)


# ---------------------------------------------------------------------------------------------------- v3.0
def test_v3_units_point_into_shared_files(v3_root):
    units = LeRobotSource(str(v3_root)).units()
    json.dumps(units)  # JSON-able
    assert [u["id"] for u in units] == [f"episode_{i:06d}" for i in range(4)]
    assert [Path(u["file"]).name for u in units] == ["file-000.parquet"] * 3 + ["file-001.parquet"]
    top = [u["videos"][TOP] for u in units]
    assert [v["file"].endswith("file-000.mp4") for v in top] == [True, True, True, False]
    assert [v["from_timestamp"] for v in top] == pytest.approx([0.0, 0.5, 1.2, 0.0])
    assert all("error" not in u for u in units)


def test_v3_frames_vectors_and_language(v3_root):
    src = LeRobotSource(str(v3_root))
    for unit, start, n in zip(src.units(), _starts(V3_LENGTHS), V3_LENGTHS):
        ep = src.read(unit)
        index = unit["episode_index"]
        assert ep.length == n and ep.fps == FPS and ep.source == "lerobot"
        assert ep.cameras == ["top", "wrist"]
        assert ep.rgb["top"].shape == (n, 64, 64, 3) and ep.rgb["top"].dtype == np.uint8
        assert frame_ids(ep.rgb["top"]).tolist() == list(range(start, start + n))  # right frames, not flipped
        assert frame_ids(ep.rgb["wrist"], inverted=True).tolist() == list(range(start, start + n))
        np.testing.assert_array_equal(ep.state, state_of(index, n))
        np.testing.assert_array_equal(ep.actions, action_of(index, n))
        assert ep.language == TASKS[index % len(TASKS)]
        assert ep.metadata["codebase_version"] == "v3.0" and ep.metadata["episode_index"] == index


def test_only_the_episodes_row_groups_are_read(v3_root):
    # file-000 holds episodes 0, 1, 2 (rows 0-4, 5-11, 12-17) in row groups of 4 rows
    metadata = pq.ParquetFile(v3_root / "data/chunk-000/file-000.parquet").metadata
    assert metadata.num_row_groups == 5
    assert [episode_row_groups(metadata, i) for i in range(3)] == [[0, 1], [1, 2], [3, 4]]
    assert episode_row_groups(metadata, 7) == []


def test_v3_camera_selection_and_options(v3_root):
    assert open_source("lerobot", str(v3_root), cameras=["top"]).read(_unit(LeRobotSource(str(v3_root)), 1)).cameras \
        == ["top"]
    src = LeRobotSource(str(v3_root), cameras=[WRIST], state_key=None, action_key=None, episodes=[1, 3],
                        language="hand it over")
    units = src.units()
    assert [u["episode_index"] for u in units] == [1, 3]
    ep = src.read(units[1])
    assert ep.cameras == ["wrist"] and ep.state is None and ep.actions is None and ep.language == "hand it over"
    assert camera_name("observation.images.cam_high") == "cam_high" and camera_name("image") == "image"
    with pytest.raises(SpecError):
        open_source("lerobot", str(v3_root), fps=30)
    with pytest.raises(SpecError):
        LeRobotSource(str(v3_root), cameras="top")


def test_unknown_camera_is_an_error_unit(v3_root):
    (unit,) = LeRobotSource(str(v3_root), cameras=["side"]).units()
    assert "side" in unit["error"] and TOP in unit["error"]
    with pytest.raises(SourceError, match="not image/video features"):
        LeRobotSource(str(v3_root), cameras=["side"]).read(unit)


# ---------------------------------------------------------------------------------------------------- v2.1
def test_v21_video_and_image_features(v21_root):
    src = LeRobotSource(str(v21_root))
    units = src.units()
    assert [Path(u["file"]).name for u in units] == [f"episode_{i:06d}.parquet" for i in range(3)]
    for unit, start, n in zip(units, _starts(V2_LENGTHS), V2_LENGTHS):
        ep = src.read(unit)
        index = unit["episode_index"]
        assert ep.cameras == ["top", "wrist"] and ep.length == n
        assert frame_ids(ep.rgb["top"]).tolist() == list(range(start, start + n))
        assert frame_ids(ep.rgb["wrist"], inverted=True).tolist() == list(range(start, start + n))  # PNG, lossless
        np.testing.assert_array_equal(ep.state, state_of(index, n))
        np.testing.assert_array_equal(ep.actions, action_of(index, n))
        assert ep.language == TASKS[index % len(TASKS)]


def test_v21_missing_episodes_jsonl(v21_root, tmp_path):
    root = _copy(v21_root, tmp_path)
    (root / "meta/episodes.jsonl").unlink()
    (unit,) = LeRobotSource(str(root)).units()
    assert "episodes.jsonl" in unit["error"]


# -------------------------------------------------------------------------------------------- corrupt input
def test_missing_info_and_unsupported_version(v3_root, tmp_path):
    root = _copy(v3_root, tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps(dict(info, codebase_version="v1.6")))
    (unit,) = LeRobotSource(str(root)).units()
    assert "v1.6" in unit["error"]
    (root / "meta/info.json").unlink()
    (unit,) = LeRobotSource(str(root)).units()
    with pytest.raises(SourceError, match="info.json is missing"):
        LeRobotSource(str(root)).read(unit)
    with pytest.raises(SourceError):
        LeRobotSource(str(tmp_path / "nowhere"))


def test_missing_or_truncated_data_file(v3_root, tmp_path):
    root = _copy(v3_root, tmp_path)
    (root / "data/chunk-000/file-001.parquet").unlink()
    src = LeRobotSource(str(root))
    with pytest.raises(SourceError, match="file-001.parquet") as info:
        src.read(_unit(src, 3))
    assert info.value.episode == "episode_000003"
    assert src.read(_unit(src, 0)).length == V3_LENGTHS[0]  # the other episodes still read
    data = root / "data/chunk-000/file-000.parquet"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(SourceError, match="file-000.parquet"):
        src.read(_unit(src, 1))


def test_missing_or_truncated_video(v3_root, tmp_path):
    root = _copy(v3_root, tmp_path)
    video = root / f"videos/{WRIST}/chunk-000/file-000.mp4"
    video.unlink()
    src = LeRobotSource(str(root))
    with pytest.raises(SourceError, match="missing"):
        src.read(_unit(src, 0))
    top = root / f"videos/{TOP}/chunk-000/file-001.mp4"
    top.write_bytes(top.read_bytes()[:200])
    with pytest.raises(SourceError, match="file-001.mp4"):
        src.read(_unit(src, 3))


def test_timestamps_outside_the_video(v3_root, tmp_path):
    root = _copy(v3_root, tmp_path)
    meta = root / V3_EPISODES.format(chunk_index=0, file_index=0)

    def shrink_span(rows):  # episode 1's span ends before its last frame
        rows[1][f"videos/{TOP}/to_timestamp"] = rows[1][f"videos/{TOP}/from_timestamp"] + 0.2

    _edit_parquet(meta, shrink_span)
    src = LeRobotSource(str(root))
    with pytest.raises(SourceError, match="outside"):
        src.read(_unit(src, 1))

    def past_the_end(rows):  # episode 2 placed after the end of the shared video
        rows[2][f"videos/{TOP}/from_timestamp"] += 5.0
        rows[2][f"videos/{TOP}/to_timestamp"] += 5.0

    _edit_parquet(meta, past_the_end)
    with pytest.raises(SourceError, match="tolerance"):
        src.read(_unit(src, 2))


def test_mismatched_lengths(v3_root, tmp_path):
    root = _copy(v3_root, tmp_path)
    meta = root / V3_EPISODES.format(chunk_index=0, file_index=0)

    def lengths(rows):
        rows[0]["length"] = 9  # disagrees with dataset_to_index - dataset_from_index
        rows[1]["length"] += 1  # both say 8, but the data file holds 7 rows
        rows[1]["dataset_to_index"] += 1

    _edit_parquet(meta, lengths)
    src = LeRobotSource(str(root))
    first = _unit(src, 0)
    assert "disagrees" in first["error"]
    with pytest.raises(SourceError, match="disagrees"):
        src.read(first)
    with pytest.raises(SourceError, match="7 rows but its metadata says length 8"):
        src.read(_unit(src, 1))


def test_bad_values_and_missing_features(v3_root, tmp_path):
    root = _copy(v3_root, tmp_path)

    def nan_action(rows):
        rows[3]["action"] = [float("nan"), 0.0]

    _edit_parquet(root / "data/chunk-000/file-000.parquet", nan_action)
    src = LeRobotSource(str(root))
    with pytest.raises(SourceError, match="actions"):
        src.read(_unit(src, 0))
    other = LeRobotSource(str(root), state_key="observation.joints")
    with pytest.raises(SourceError, match="observation.joints"):
        other.read(_unit(other, 3))
