"""Reading stores and inputs on object storage, against a real S3 server on loopback (moto server mode).

A tiny store is built locally and uploaded whole (the layout of a local store under the prefix); then
``validate``, ``inspect``, ``StreamingLoader`` and ``WindowDataset`` run on its ``s3://`` URL and must agree
with the local store; damage done to the remote objects must fail ``validate``. Last, a build whose inputs
are an ``s3://`` video folder and an ``s3://`` HDF5 file must write the shards the local copies give. The
tests that build a store with ``run_job`` are marked slow (about 20 s together on 2 idle cores).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from motiondata.cli import main as cli_main
from motiondata.errors import SpecError
from motiondata.loader.random_access import WindowDataset
from motiondata.loader.streaming import StreamingLoader
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec, parse_spec
from motiondata.store import layout
from motiondata.store.episodes_zarr import list_episodes
from motiondata.store.validate import validate_store
from tests.factories_loader import make_store
from tests.factories_pipeline import write_libero_hdf5, write_video_folder
from tests.factories_recipes import small_aloha

RECIPE = {"stride": 10, "fields": {"image": {"from": "rgb.top", "offsets": [0, 5]},
                                   "actions": {"from": "actions", "offsets": {"start": 0, "stop": 4}}}}


def _fs(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)


def _upload(endpoint: str, local: Path, bucket: str | None = None, name: str = "store") -> str:
    """``local`` copied whole to ``s3://<bucket>/<name>`` (a fresh bucket when none is given)."""
    fs = _fs(endpoint)
    if bucket is None:
        bucket = f"md-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
    bucket = bucket.removeprefix("s3://")
    if local.is_dir():
        fs.put(str(local), f"{bucket}/{name}", recursive=True)
    else:
        fs.put_file(str(local), f"{bucket}/{name}")
    return f"s3://{bucket}/{name}"


@pytest.fixture(scope="module")
def window_store(tmp_path_factory, s3_server) -> tuple[Path, str]:
    local = make_store(tmp_path_factory.mktemp("window") / "store", episodes=3, windows=4)
    return local, _upload(s3_server, local)


@pytest.fixture(scope="module")
def recipe_store(tmp_path_factory, s3_server) -> tuple[Path, str, Path]:
    tmp = tmp_path_factory.mktemp("recipe")
    spec = {"name": "s3_recipe", "frames": {"size": [16, 16]}, "shards": {"episodes_per_shard": 1},
            "sources": [{"kind": "hdf5", "path": str(small_aloha(tmp / "aloha.hdf5", frames=24)), "name": "aloha",
                         "options": {"depth": False, "cameras": ["top"]}}],
            "samples": RECIPE}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_job(load_spec(tmp / "spec.yaml"), tmp / "out", executor="local", show_progress=False)
    return tmp / "out", _upload(s3_server, tmp / "out"), tmp


def _assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert sorted(a) == sorted(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif hasattr(a, "shape"):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
        assert a == b


# ----------------------------------------------------------------------------- validate / inspect

@pytest.mark.slow
def test_validate_and_inspect_pass_over_s3(window_store, recipe_store, capsys):
    local, url = recipe_store[:2]
    assert validate_store(local) == []
    assert cli_main(["validate", url]) == 0 and cli_main(["validate", url, "--quick"]) == 0
    capsys.readouterr()
    assert cli_main(["inspect", window_store[1], "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["store"] == window_store[1] and summary["samples"] == 12
    assert cli_main(["inspect", window_store[1], "--episode", "ep001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episode"]["id"] == "ep001"


@pytest.mark.slow
def test_validate_fails_on_a_damaged_tar_and_a_deleted_chunk_object(recipe_store, s3_server, capsys):
    url = _upload(s3_server, recipe_store[0])
    fs, root = _fs(s3_server), url.removeprefix("s3://")
    data = bytearray(fs.cat_file(f"{root}/shards/shard-000001.tar"))
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    fs.pipe_file(f"{root}/shards/shard-000001.tar", bytes(data))
    fs.rm_file(f"{root}/episodes.zarr/aloha_demo_1/state/c/1/0")
    assert cli_main(["validate", url, "--quick"]) == 0  # sizes and metadata agree: a quick check cannot see it
    capsys.readouterr()
    assert cli_main(["validate", url]) != 0
    out = capsys.readouterr().out
    assert "shard shard-000001" in out and "sha256" in out and "motiondata-remote" not in out
    assert "episodes.zarr/aloha_demo_1: array state" in out and "chunk files are missing" in out


def test_missing_prefix_or_bucket_is_one_line(s3_bucket, capsys):
    for url in (f"{s3_bucket}/nothing-here", f"s3://md-no-such-bucket-{uuid.uuid4().hex[:8]}/store"):
        assert cli_main(["validate", url]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and url in err, err
    missing = f"s3://md-no-such-bucket-{uuid.uuid4().hex[:8]}/store"
    for command in ("validate", "inspect"):  # a user's mistake: exit 2, the fix named, never "internal error"
        assert cli_main([command, missing]) == 2
        err = capsys.readouterr().err.strip()
        assert "does not exist; create it or fix the URL" in err and "internal error" not in err, err


# ----------------------------------------------------------------------------- loaders

def test_streaming_loader_over_s3_yields_the_local_samples(window_store):
    local, url = window_store
    remote_batches = list(StreamingLoader(url, batch_size=3, shuffle=False))
    local_batches = list(StreamingLoader(str(local), batch_size=3, shuffle=False))
    assert len(remote_batches) == len(local_batches) == 4
    for r, lo in zip(remote_batches, local_batches):
        _assert_same({k: v for k, v in r.items()}, {k: v for k, v in lo.items()})


@pytest.mark.slow
def test_window_dataset_over_s3_equals_local(window_store, recipe_store, s3_server):
    for (local, url), items in ((window_store, (0, 5, 11)), (recipe_store[:2], None)):
        remote_ds, local_ds = WindowDataset(url), WindowDataset(local)
        assert type(remote_ds) is type(local_ds) and len(remote_ds) == len(local_ds) > 0
        assert remote_ds.episodes == local_ds.episodes
        for i in items or range(len(local_ds)):
            _assert_same(remote_ds[i], local_ds[i])
    fs, root = _fs(s3_server), window_store[1].removeprefix("s3://") + "/episodes.zarr"
    fs.pipe_file(f"{root}/.tmp-0123.tmp/zarr.json", b"{}")  # a hidden temporary group
    fs.pipe_file(f"{root}/ep009/actions/c/0/0", b"x")  # an upload cut before its zarr.json
    assert list_episodes(window_store[1]) == list_episodes(window_store[0]) == ["ep000", "ep001", "ep002"]
    spans = WindowDataset(window_store[1], fields=["actions"], window=6, stride=4)
    _assert_same(spans.get("ep002", start=3, length=6), WindowDataset(window_store[0], fields=["actions"],
                                                                     window=6, stride=4).get("ep002", start=3, length=6))


# ----------------------------------------------------------------------------- s3:// inputs

def _spec(path: Path, video: str, hdf5: str) -> Path:
    spec = {"name": "s3_inputs", "sources": [{"kind": "video", "path": video, "name": "web"},
                                            {"kind": "hdf5", "path": hdf5, "name": "libero"}],
            "frames": {"size": [24, 24]}, "windows": {"length": 8, "stride": 4}, "shards": {"episodes_per_shard": 2}}
    path.write_text(yaml.safe_dump(spec))
    return path


def _tar_digests(out: Path) -> list[str]:
    return [entry["sha256"] for entry in json.loads(layout.job_manifest(out).read_text())["shards"]]


@pytest.mark.slow
def test_s3_inputs_build_the_shards_of_their_local_copies(tmp_path, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("MOTIONDATA_STAGING", str(tmp_path / "staging"))
    videos = write_video_folder(tmp_path / "videos", good=2, corrupt=True)
    hdf5 = write_libero_hdf5(tmp_path / "libero.hdf5", episodes=2, steps=12, size=24)
    video_url, hdf5_url = _upload(s3_server, videos, s3_bucket, "videos"), _upload(s3_server, hdf5, s3_bucket, "l.hdf5")
    run_job(load_spec(_spec(tmp_path / "local.yaml", str(videos), str(tmp_path / "libero.hdf5"))), tmp_path / "a",
            executor="local", show_progress=False)
    remote = run_job(load_spec(_spec(tmp_path / "s3.yaml", video_url, hdf5_url)), tmp_path / "b", executor="local",
                     show_progress=False)
    assert not remote.failed and _tar_digests(tmp_path / "a") == _tar_digests(tmp_path / "b")
    errors = {out: [json.loads(line) for line in layout.errors_file(tmp_path / out).read_text().splitlines()]
              for out in "ab"}
    assert {e["file"] for e in errors["b"]} == {f"{video_url}/{n}" for n in ("empty.mp4", "not_a_video.mp4",
                                                                             "truncated.mp4")}, errors
    reasons = {out: {(Path(e["file"]).name, e["reason"].split(" (")[0]) for e in records}  # PyAV's detail names
               for out, records in errors.items()}                                            # the file it read
    assert reasons["a"] == reasons["b"]
    cached = list((tmp_path / "staging").rglob("clip_0.*"))
    assert sorted(p.name for p in cached) == ["clip_0.mp4", "clip_0.txt"]  # the video and its caption, once


def test_an_input_is_downloaded_once_and_again_when_it_changes(tmp_path, s3_server, s3_bucket, monkeypatch):
    from motiondata.sources.remote_input import localize

    monkeypatch.setenv("MOTIONDATA_STAGING", str(tmp_path / "staging"))
    fs, key = _fs(s3_server), s3_bucket.removeprefix("s3://") + "/data/x.bin"
    fs.pipe_file(key, b"first")
    local = Path(localize(f"{s3_bucket}/data"))
    copy = local / "x.bin"
    inode, stamp = copy.stat().st_ino, fs.info(key)["LastModified"].timestamp()
    assert copy.read_bytes() == b"first" and copy.stat().st_mtime == stamp  # the object's time: same on every node
    assert Path(localize(f"{s3_bucket}/data")) == local and copy.stat().st_ino == inode  # reused, not fetched
    fs.pipe_file(key, b"second!")
    fs.pipe_file(s3_bucket.removeprefix("s3://") + "/data/y.bin", b"y")
    localize(f"{s3_bucket}/data")
    assert copy.read_bytes() == b"second!" and (local / "y.bin").read_bytes() == b"y"
    fs.rm_file(s3_bucket.removeprefix("s3://") + "/data/y.bin")
    localize(f"{s3_bucket}/data")
    assert not (local / "y.bin").exists()  # gone from the prefix: gone from the cache


def test_unknown_scheme_is_one_spec_line():
    with pytest.raises(SpecError, match="not a URL fsspec knows"):
        parse_spec({"sources": [{"kind": "hdf5", "path": "nope://bucket/x.hdf5"}]})


@pytest.mark.slow
def test_a_replaced_remote_video_is_a_changed_input(tmp_path, s3_server, s3_bucket, monkeypatch):
    """Same frame count and fps, other pixels: only the object's ETag (in its fingerprint) tells them apart."""
    from motiondata.errors import MotionDataError

    monkeypatch.setenv("MOTIONDATA_STAGING", str(tmp_path / "staging"))
    videos = write_video_folder(tmp_path / "videos", good=2, corrupt=False)
    url = _upload(s3_server, videos, s3_bucket, "videos")
    spec = {"name": "s3_videos", "sources": [{"kind": "video", "path": url, "name": "web"}],
            "frames": {"size": [24, 24]}, "windows": {"length": 8, "stride": 4}, "shards": {"episodes_per_shard": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    first = run_job(load_spec(tmp_path / "spec.yaml"), tmp_path / "out", executor="local", show_progress=False)
    recorded = json.loads(layout.shard_manifest(tmp_path / "out", 0).read_text())["inputs"][0]["fingerprint"]
    assert first.complete and list(recorded["files"].values())[0].split(":")[1] == "etag", recorded
    fs = _fs(s3_server)
    fs.pipe_file(f"{url.removeprefix('s3://')}/clip_0.mp4", (videos / "clip_1.mp4").read_bytes())
    changed = r"input changed since shard-000000 was built: web:clip_0 \((size|content)"
    with pytest.raises(MotionDataError, match=changed):
        run_job(load_spec(tmp_path / "spec.yaml"), tmp_path / "out", executor="local", show_progress=False)
    again = run_job(load_spec(tmp_path / "spec.yaml"), tmp_path / "out", executor="local", show_progress=False,
                    rebuild_changed=True)
    assert again.complete and again.shards_built == 1  # only the shard of the replaced video
