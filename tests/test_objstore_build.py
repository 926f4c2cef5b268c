"""Issue 11 item 3, write side: ``motiondata build ... --out s3://bucket/prefix`` against a real S3 server on
loopback (moto server mode): every layout object uploaded, shard tars byte-identical to a local build,
resume after kill -9, a two-node Ray cluster writing one prefix, one line for a missing bucket."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from motiondata.cli import main as cli_main
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout, objstore
from tests.factories_pipeline import write_libero_hdf5, write_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def staging(tmp_path, monkeypatch) -> Path:
    """This test's staging base (``MOTIONDATA_STAGING``); the in-process S3 server's request log stays quiet."""
    monkeypatch.setenv("MOTIONDATA_STAGING", str(tmp_path / "staging"))
    server_log = logging.getLogger("werkzeug")
    level = server_log.level
    server_log.setLevel(logging.ERROR)
    yield tmp_path / "staging"
    server_log.setLevel(level)


def _spec(tmp_path: Path, episodes: int = 3) -> Path:
    a = write_libero_hdf5(tmp_path / "a.hdf5", episodes=episodes, steps=8, size=16, seed=1, nan_demo=1)
    return write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(a), "name": "a"}], per_shard=1,
                      size=[16, 16])


def _remote_files(url: str) -> dict[str, bytes]:
    """Relative key -> bytes of every object under ``url``."""
    fs, root = objstore.filesystem(url)
    return {key[len(root) + 1:]: fs.cat_file(key) for key in sorted(fs.find(root))}


def _local_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tars(files: dict[str, bytes]) -> dict[str, str]:
    return {k: _sha(v) for k, v in files.items() if k.endswith(".tar")}


def test_build_to_s3_matches_a_local_build_and_resumes_with_nothing_to_do(tmp_path, s3_bucket, staging, capsys,
                                                                         caplog):
    spec_path = _spec(tmp_path)
    url = f"{s3_bucket}/store"
    local = run_job(load_spec(spec_path), tmp_path / "local", executor="local", show_progress=False)
    with caplog.at_level(logging.INFO, logger="motiondata.pipeline.runner"):
        code = cli_main(["build", str(spec_path), "--out", url, "--executor", "local", "--json"])
    built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("built ")]
    assert built and " 0 frames" not in built[0], built  # the progress counts the uploaded shards' frames
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["out"] == url and summary["complete"] and summary["shards_built"] == 3
    remote, mine = _remote_files(url), _local_files(tmp_path / "local")
    assert sorted(remote) == sorted(mine)  # every layout object: shards, stats, errors, zarr groups, report
    assert _tars(remote) == _tars(mine) and len(_tars(remote)) == 3
    differ = sorted(k for k in remote if remote[k] != mine[k])
    assert differ == [layout.REPORT], differ  # report.md names the store: the URL here, the folder there
    assert f"`{url}`" in remote[layout.REPORT].decode()
    job = json.loads(remote[layout.JOB_MANIFEST])
    assert job["complete"] and [s["tar"] for s in job["shards"]] == [f"shards/{layout.shard_name(i)}.tar"
                                                                      for i in range(3)]
    assert job["num_errors"] == local.num_errors == 1
    assert not list(staging.rglob("*.tar")) and not list(staging.rglob("c/*"))  # uploaded, then dropped
    assert cli_main(["build", str(spec_path), "--out", url, "--executor", "local", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "built 0 shards, skipped 3" in printed and f"{url}/manifest.json" in printed  # the URL, not staging
    assert _remote_files(url) == remote
    fs, root = objstore.filesystem(url)
    tar = f"{root}/{layout.SHARDS_DIR}/{layout.shard_name(0)}.tar"
    fs.pipe_file(tar, b"x" * len(remote["shards/shard-000000.tar"]))  # same size, other bytes: only --verify sees it
    verified = run_job(load_spec(spec_path), url, executor="local", show_progress=False, verify=True)
    assert verified.shards_built == 1 and _remote_files(url) == remote
    capsys.readouterr()
    assert cli_main(["validate", url, "--json"]) == 0, capsys.readouterr()  # the read side (validate_remote)


def test_missing_bucket_is_one_line(tmp_path, s3_server, staging, capsys):
    spec_path = _spec(tmp_path, episodes=1)
    code = cli_main(["build", str(spec_path), "--out", "s3://no-such-bucket-md/store", "--executor", "local", "-q"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "no-such-bucket-md" in err and "does not exist" in err


def _slow_spec(tmp_path: Path, episodes: int = 4) -> Path:
    """One shard per episode, each taking about ``SLEEP`` seconds (a stage that waits), so a kill lands mid-build."""
    a = write_libero_hdf5(tmp_path / "a.hdf5", episodes=episodes, steps=8, size=16, seed=3)
    stage = {"name": "tests.factories_scale:StandInEncoder", "sleep": SLEEP, "gpus": 0.0}
    return write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(a), "name": "a"}], stages=[stage],
                      per_shard=1, size=[16, 16])


SLEEP = 0.4


@pytest.mark.slow
def test_killed_build_to_s3_resumes_each_shard_once(tmp_path, s3_bucket, staging):
    spec_path = _slow_spec(tmp_path)
    local = _local_files(tmp_path / "local") if run_job(load_spec(spec_path), tmp_path / "local", executor="local",
                                                        show_progress=False).complete else {}
    url = f"{s3_bucket}/killed"
    fs, root = objstore.filesystem(url)
    first = f"{root}/{layout.SHARDS_DIR}/{layout.shard_name(0)}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "motiondata.cli", "build", str(spec_path), "--out", url,
                             "--executor", "local", "-q"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not fs.exists(first):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = _remote_files(url)
    done = sorted(k for k in before if k.startswith("shards/") and k.endswith(".json") and ".stats" not in k)
    assert done and len(done) < 4, done  # killed after the first done-marker, before the last
    assert layout.JOB_MANIFEST not in before
    again = run_job(load_spec(spec_path), url, executor="local", show_progress=False)
    assert again.complete and again.shards_skipped == len(done) and again.shards_built == 4 - len(done)
    after = _remote_files(url)
    assert all(after[k] == before[k] for k in done)  # the finished shards were not built again
    assert sorted(after) == sorted(local) and _tars(after) == _tars(local)


@pytest.mark.ray
@pytest.mark.slow
def test_two_node_cluster_writes_one_prefix(tmp_path, s3_bucket, staging, monkeypatch):
    """Both Ray executors (shard tasks; the ray-stages writer task) on two nodes with their own staging."""
    import ray
    from ray.cluster_utils import Cluster

    spec = load_spec(_spec(tmp_path, episodes=4))
    run_job(spec, tmp_path / "local", executor="local", show_progress=False)
    nodes = [tmp_path / "node-a", tmp_path / "node-b"]
    monkeypatch.setenv("MOTIONDATA_STAGING", str(nodes[0]))  # each node's raylet (and workers) inherit theirs
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    monkeypatch.setenv("MOTIONDATA_STAGING", str(nodes[1]))
    cluster.add_node(num_cpus=1)
    monkeypatch.setenv("MOTIONDATA_STAGING", str(tmp_path / "driver"))
    results = {}
    try:
        ray.init(address=cluster.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
        for executor in ("ray", "ray-stages"):
            results[executor] = run_job(spec, f"{s3_bucket}/{executor}", executor=executor, show_progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
    local = _local_files(tmp_path / "local")
    for executor, result in results.items():
        url = f"{s3_bucket}/{executor}"
        remote = _remote_files(url)
        assert result.complete and result.shards_built == 4 and sorted(remote) == sorted(local), executor
        assert _tars(remote) == _tars(local) and json.loads(remote[layout.JOB_MANIFEST])["complete"]
        driver = objstore.staging_dir(url).relative_to(tmp_path / "driver")
        assert any((node / driver).is_dir() for node in nodes)  # the shard writers staged on their own nodes
        pulled = sorted(p.name for p in (tmp_path / "driver" / driver / layout.SHARDS_DIR).glob("shard-??????.json"))
        assert pulled == [f"{layout.shard_name(i)}.json" for i in range(4)]  # finalize pulled every manifest


@pytest.mark.slow
def test_adding_a_stage_to_an_s3_recipe_store_rebuilds_from_its_downloaded_tables(tmp_path, s3_bucket, staging):
    from motiondata.pipeline import incremental_shard
    from tests.factories_recipes import small_aloha
    from tests.test_incremental import BASE, with_text, write_spec as write_recipe_spec

    base = {**BASE, "stages": BASE["stages"][:1], "samples": {**BASE["samples"], "fields": {
        k: v for k, v in BASE["samples"]["fields"].items() if k in ("image.top", "actions", "fast.tokens")}}}
    hdf5 = small_aloha(tmp_path / "a.hdf5", episodes=2, frames=24)
    url = f"{s3_bucket}/recipe"
    assert run_job(load_spec(write_recipe_spec(tmp_path, "base", base, hdf5)), url, executor="local",
                   show_progress=False).complete
    spec = load_spec(write_recipe_spec(tmp_path, "text", with_text(base), hdf5))
    incremental_shard.STAGE_RUNS.clear()
    result = run_job(spec, url, executor="local", show_progress=False, rebuild_changed=True)
    assert result.complete and incremental_shard.STAGE_RUNS == {"text": 2}  # from the stored tables: text only
    run_job(spec, tmp_path / "fresh", executor="local", show_progress=False)
    remote, fresh = _remote_files(url), _local_files(tmp_path / "fresh")
    assert sorted(remote) == sorted(fresh)
    assert sorted(k for k in remote if remote[k] != fresh[k]) == [layout.REPORT]
