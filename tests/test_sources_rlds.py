"""RLDS reader: TFDS builder folders written with the tfrecord package, read back exactly without TensorFlow."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from motiondata.errors import SourceError, SpecError
from motiondata.sources import open_source
from motiondata.sources.rlds_records import read_record, scan_records
from tests.factories_rlds import write_rlds


def _read_all(source):
    return [source.read(u) for u in source.units()]


@pytest.mark.parametrize("compress", [False, True])
def test_png_episodes_read_back_exactly(tmp_path, compress):
    root, data = write_rlds(tmp_path / "libero" / "1.0.0", compress=compress)
    source = open_source("rlds", str(root), preset="libero")
    units = source.units()
    assert [u["id"] for u in units] == ["train_s00000_e000000", "train_s00000_e000001", "train_s00001_e000000"]
    for episode, want in zip(_read_all(source), data):
        assert episode.cameras == ["image", "wrist_image"]
        np.testing.assert_array_equal(episode.rgb["image"], want["image"])
        np.testing.assert_array_equal(episode.rgb["wrist_image"], want["wrist_image"])
        np.testing.assert_array_equal(episode.actions, want["action"])
        np.testing.assert_array_equal(episode.state, want["state"])
        np.testing.assert_array_equal(episode.joints, want["joint_state"])
        assert episode.language == want["language"]
        assert episode.fps == 10.0 and episode.metadata["fps_from"] == "preset"
        assert episode.metadata["is_last"] is True and episode.metadata["terminal"] is True
        assert episode.metadata["episode_metadata"]["file_path"].startswith("/data/raw/episode_")


def test_jpeg_cameras_discovered_without_preset(tmp_path):
    root, data = write_rlds(tmp_path / "ds", episodes_per_shard=(1,), fmt="jpeg")
    source = open_source("rlds", str(root), fps=15)
    episode = source.read(source.units()[0])
    assert episode.cameras == ["image", "wrist_image"] and episode.fps == 15.0
    assert episode.joints is None  # no preset: only action and observation/state by default
    diff = episode.rgb["image"].astype(float) - data[0]["image"]
    assert 10 * np.log10(255**2 / np.mean(diff**2)) > 10  # lossy JPEG of noise: the right image, not garbage
    np.testing.assert_array_equal(episode.actions, data[0]["action"])


def test_options_pick_and_concatenate_keys(tmp_path):
    root, data = write_rlds(tmp_path / "ds", episodes_per_shard=(1,))
    source = open_source("rlds", str(root), cameras={"front": "observation/image"},
                         actions=["action", "observation/joint_state"], language="language_instruction")
    episode = source.read(source.units()[0])
    assert episode.cameras == ["front"]
    np.testing.assert_array_equal(episode.actions, np.concatenate([data[0]["action"], data[0]["joint_state"]], 1))


def test_bad_crc_is_a_record_for_that_episode_only(tmp_path):
    root, data = write_rlds(tmp_path / "ds", episodes_per_shard=(3,))
    shard = next(root.glob("*.tfrecord-*"))
    records, _ = scan_records(str(shard))
    blob = bytearray(shard.read_bytes())
    blob[records[1][0] + 12 + 40] ^= 0xFF  # a byte inside record 1's data
    shard.write_bytes(bytes(blob))
    source = open_source("rlds", str(root))
    units = source.units()
    assert len(units) == 3 and not any(u.get("error") for u in units)
    source.read(units[0]), source.read(units[2])
    with pytest.raises(SourceError, match="data CRC does not match"):
        source.read(units[1])


def test_truncated_shard_keeps_the_records_before_the_cut(tmp_path):
    root, _ = write_rlds(tmp_path / "ds", episodes_per_shard=(3,))
    shard = next(root.glob("*.tfrecord-*"))
    shard.write_bytes(shard.read_bytes()[:-100])
    units = open_source("rlds", str(root)).units()
    assert [bool(u.get("error")) for u in units] == [False, False, True]
    assert "truncated" in units[2]["error"] and "re-download" in units[2]["error"]
    with pytest.raises(SourceError, match="truncated"):
        open_source("rlds", str(root)).read(units[2])


def test_truncated_gzip_shard_is_a_record(tmp_path):
    root, _ = write_rlds(tmp_path / "ds", episodes_per_shard=(2,), compress=True)
    shard = next(root.glob("*.tfrecord-*"))
    shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) // 2])
    units = open_source("rlds", str(root)).units()
    assert units[-1].get("error") and "truncated" in units[-1]["error"]


def test_corrupt_header_crc(tmp_path):
    root, _ = write_rlds(tmp_path / "ds", episodes_per_shard=(2,))
    shard = next(root.glob("*.tfrecord-*"))
    blob = bytearray(shard.read_bytes())
    blob[0] ^= 0x01
    shard.write_bytes(bytes(blob))
    units = open_source("rlds", str(root)).units()
    assert len(units) == 1 and "length CRC" in units[0]["error"]


def test_record_disagreeing_with_features_json_is_a_record(tmp_path):
    root, _ = write_rlds(tmp_path / "ds", episodes_per_shard=(1,))
    features = json.loads((root / "features.json").read_text())
    steps = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]
    steps["action"]["tensor"]["shape"]["dimensions"] = ["6"]
    (root / "features.json").write_text(json.dumps(features))
    source = open_source("rlds", str(root))
    with pytest.raises(SourceError, match="steps/action"):
        source.read(source.units()[0])


def test_missing_metadata_and_bad_options(tmp_path):
    root, _ = write_rlds(tmp_path / "ds", episodes_per_shard=(1,))
    units = open_source("rlds", str(root), split="val").units()
    assert "no 'val' TFRecord shards" in units[0]["error"]
    (root / "features.json").unlink()
    units = open_source("rlds", str(root)).units()
    assert len(units) == 1 and "features.json is missing" in units[0]["error"]
    with pytest.raises(SpecError, match="preset"):
        open_source("rlds", str(root), preset="nope")
    with pytest.raises(SpecError, match="no option"):
        open_source("rlds", str(root), camera="x")
    with pytest.raises(SourceError, match="does not exist"):
        open_source("rlds", str(tmp_path / "missing"))


def test_fsspec_memory_path(tmp_path):
    import fsspec

    root, data = write_rlds(tmp_path / "ds", episodes_per_shard=(1,))
    fs = fsspec.filesystem("memory")
    for file in root.iterdir():
        fs.pipe(f"/rlds_test/{file.name}", file.read_bytes())
    source = open_source("rlds", "memory://rlds_test")
    units = source.units()
    episode = source.read(units[0])
    np.testing.assert_array_equal(episode.actions, data[0]["action"])
    fs.rm("/rlds_test", recursive=True)


def test_gzip_offsets_are_decompressed_positions(tmp_path):
    root, _ = write_rlds(tmp_path / "ds", episodes_per_shard=(2,), compress=True)
    shard = str(next(root.glob("*.tfrecord-*")))
    records, problem = scan_records(shard)
    assert problem is None and len(records) == 2
    plain = gzip.decompress(open(shard, "rb").read())
    assert read_record(shard, 1, records[1][0]) == plain[records[1][0] + 12: records[1][0] + 12 + records[1][1]]
