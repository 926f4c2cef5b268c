"""LeRobot v3.0 export: a real recipe store exported, read back with motiondata's own LeRobot reader."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from motiondata.cli import main
from motiondata.export.lerobot import export_lerobot
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.pipeline.table_build import load_tables
from motiondata.sources import open_source
from tests.factories_recipes import REPO, small_aloha

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    spec = {"name": "export_test", "frames": {"size": [32, 32]}, "shards": {"episodes_per_shard": 1},
            "sources": [{"kind": "hdf5", "path": str(small_aloha(tmp / "a.hdf5", frames=20)), "name": "aloha"}],
            "stages": [{"name": "fast", "tokenizer": str(REPO / "tokenizers/fast/demo"), "horizon": 10}],
            "samples": {"stride": 5, "fields": {"image.top": {"from": "rgb.top", "offsets": [0]},
                                                "fast.tokens": {"from": "fast.tokens", "offsets": [0]}}}}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_job(load_spec(tmp / "spec.yaml"), tmp / "out", executor="local", show_progress=False)
    return tmp / "out"


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot") / "aloha_lerobot"
    summary = export_lerobot(store, out, repo_id="local/aloha")
    return store, out, summary


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_readback_frames_psnr_and_vectors_exact(exported):
    store, out, summary = exported
    assert summary["episodes"] == 2 and summary["frames"] == 40
    source = open_source("lerobot", str(out), state_key="observation.state", action_key="action",
                         ee_pose_key="observation.ee_pose", joints_key="observation.joints",
                         gripper_key="observation.gripper")
    units = source.units()
    assert [u["id"] for u in units] == ["episode_000000", "episode_000001"]
    for unit, episode_id in zip(units, ["aloha_demo_0", "aloha_demo_1"]):
        episode = source.read(unit)
        tables, attrs = load_tables(store, episode_id)
        assert episode.fps == 10.0 and episode.language == attrs["language"]
        for field in ("state", "actions", "ee_pose", "joints", "gripper"):
            np.testing.assert_array_equal(getattr(episode, field), tables[field].values)
        for cam in ("top", "angle"):
            stored = tables[f"rgb.{cam}"].values
            assert episode.rgb[cam].shape == stored.shape
            assert min(psnr(a, b) for a, b in zip(episode.rgb[cam], stored)) >= 35.0


def test_layout_follows_lerobot_v3(exported):
    _, out, _ = exported
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["total_episodes"] == 2
    assert info["total_frames"] == 40 and info["splits"] == {"train": "0:2"}
    video = info["features"]["observation.images.top"]
    assert video["dtype"] == "video" and video["shape"] == [32, 32, 3] and video["info"]["video.codec"] == "h264"
    assert info["features"]["action"] == {"dtype": "float32", "shape": [14], "names": [f"action_{i}" for i in range(14)]}
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in info["features"]
    assert (out / "data/chunk-000/file-000.parquet").is_file()
    assert (out / "videos/observation.images.top/chunk-000/file-000.mp4").is_file()
    tasks = pd.read_parquet(out / "meta/tasks.parquet")
    assert tasks.index.name == "task" and tasks["task_index"].tolist() == [0]
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_from_index"] for e in episodes] == [0, 20]
    assert episodes[1]["videos/observation.images.top/from_timestamp"] == pytest.approx(2.0)
    stats = json.loads((out / "meta/stats.json").read_text())
    assert np.asarray(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [40]
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(40))


def test_representations_become_per_frame_features(exported):
    store, out, _ = exported
    data = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pandas()
    first = data[data.episode_index == 0]
    table = load_tables(store, "aloha_demo_0")[0]["fast.tokens"]
    rows = np.stack(first["fast_tokens_row"].to_numpy()).reshape(-1)
    for row, frame in enumerate(table.frames):
        assert rows[frame] == row  # chunk rows sit at their chunk start frames
        width = table.values.shape[1]
        np.testing.assert_array_equal(np.asarray(first["fast_tokens"].iloc[frame])[:width], table.values[row])
        assert int(np.asarray(first["fast_tokens_len"].iloc[frame])[0]) == table.lengths[row]
    assert set(rows[np.setdiff1d(np.arange(20), table.frames)]) == {-1}


def test_cli_refuses_a_non_empty_out_and_leaves_nothing_on_failure(exported, tmp_path, capsys):
    store, out, _ = exported
    assert main(["export", "lerobot", str(store), str(out), "--json"]) == 2
    assert "not an empty folder" in json.loads(capsys.readouterr().out)["error"]
    assert main(["export", "lerobot", str(store), str(tmp_path / "x"), "--source", "nope"]) == 1
    assert not any(tmp_path.iterdir())
    assert main(["export", "lerobot", str(store), str(tmp_path / "y"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
