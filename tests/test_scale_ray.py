"""Issue 11 items 1-2 on this CPU machine with logical GPUs: GPU stages in actor pools (one GPU id per
actor), CPU work in fractional tasks, shards byte-identical to the in-process build, resumable."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout
from motiondata.store.validate import validate_store
from tests.factories_pipeline import write_libero_hdf5, write_spec
from tests.factories_scale import gpu_log
from tests.reliability.accounting import assert_accounted

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STANDIN = "tests.factories_scale:StandInEncoder"


@pytest.fixture(autouse=True)
def _loopback(monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


def _shas(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / layout.SHARDS_DIR).glob("*"))
            if p.suffix in (".tar", ".json", ".bin")}


def _spec(tmp_path: Path, gpus: float = 1.0, extra: list[dict] | None = None):
    (tmp_path / "gpu_log").mkdir()
    a = write_libero_hdf5(tmp_path / "a.hdf5", episodes=4, steps=8, size=16, seed=1, nan_demo=2)
    b = write_libero_hdf5(tmp_path / "b.hdf5", episodes=2, steps=8, size=16, seed=2)
    stages = [{"name": STANDIN, "sleep": 0.05, "gpus": gpus, "log_dir": str(tmp_path / "gpu_log")}] + (extra or [])
    return load_spec(write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(a), "name": "a"},
                                                         {"kind": "hdf5", "path": str(b), "name": "b"}],
                                stages=stages, per_shard=2, size=[16, 16]))


def _local(spec, tmp_path: Path):
    result = run_job(spec, tmp_path / "local", executor="local", show_progress=False)
    for path in (tmp_path / "gpu_log").glob("*.jsonl"):
        path.unlink()
    return result


def test_two_logical_gpus_give_two_actors_with_distinct_ids_and_identical_bytes(tmp_path):
    import ray

    spec = _spec(tmp_path, extra=[{"name": STANDIN, "gpus": 0.0, "field": "cpu_after"}])  # gpu -> cpu segments
    local = _local(spec, tmp_path)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        remote = run_job(spec, tmp_path / "ray", executor="ray", show_progress=False)  # GPUs: streaming
    finally:
        ray.shutdown()
    calls = gpu_log(tmp_path / "gpu_log")
    by_pid = {c["pid"]: c["gpu_ids"] for c in calls if c["gpu_ids"]}
    assert all(len(ids) == 1 for ids in by_pid.values())
    assert len({ids[0] for ids in by_pid.values()}) == len(by_pid) <= 2
    assert all(c["cuda"] == c["gpu_ids"][0] for c in calls)  # Ray pins CUDA_VISIBLE_DEVICES to the actor's GPU
    calls = [c for c in calls if c["gpu_ids"]]
    assert sum(c["episodes"] for c in calls) == 5 and max(c["episodes"] for c in calls) > 1  # batched
    assert remote.complete and remote.num_errors == local.num_errors == 1
    assert _shas(tmp_path / "ray") == _shas(tmp_path / "local") and len(_shas(tmp_path / "local")) == 9
    assert validate_store(tmp_path / "ray") == []
    assert_accounted(tmp_path / "ray")


def test_two_node_cluster_one_gpu_each_and_a_resumed_shard(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    spec = _spec(tmp_path)
    _local(spec, tmp_path)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        ray.init(address=cluster.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
        run_job(spec, tmp_path / "ray", executor="ray-stages", show_progress=False)
        layout.shard_manifest(tmp_path / "ray", 1).unlink()  # as if killed before shard 1's done-marker
        layout.shard_tar(tmp_path / "ray", 1).write_bytes(b"half a tar")
        again = run_job(spec, tmp_path / "ray", executor="ray-stages", show_progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert again.shards_built == 1 and again.shards_skipped == 2 and again.complete
    nodes = {tuple(c["gpu_ids"]) for c in gpu_log(tmp_path / "gpu_log")}
    assert nodes <= {("0",)} and len({c["pid"] for c in gpu_log(tmp_path / "gpu_log")}) >= 2
    assert _shas(tmp_path / "ray") == _shas(tmp_path / "local")
    assert_accounted(tmp_path / "ray")


def test_fractional_gpus_share_a_device(tmp_path):
    import ray

    spec = _spec(tmp_path, gpus=0.5)
    _local(spec, tmp_path)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        run_job(spec, tmp_path / "ray", executor="ray", show_progress=False)
    finally:
        ray.shutdown()
    calls = gpu_log(tmp_path / "gpu_log")
    assert {tuple(c["gpu_ids"]) for c in calls} == {("0",)} and len({c["pid"] for c in calls}) == 2
    assert _shas(tmp_path / "ray") == _shas(tmp_path / "local")


def test_no_gpu_in_the_cluster_means_cpu_actors(tmp_path):
    import ray

    spec = _spec(tmp_path)
    _local(spec, tmp_path)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        run_job(spec, tmp_path / "cpu", executor="ray-stages", show_progress=False)
    finally:
        ray.shutdown()
    assert all(c["gpu_ids"] == [] for c in gpu_log(tmp_path / "gpu_log"))
    assert _shas(tmp_path / "cpu") == _shas(tmp_path / "local")
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"


def test_recipe_store_on_gpu_actor_pools_equals_in_process(tmp_path):
    """Recipe mode through the streaming executor: the VAE (num_gpus 1) runs batched in an actor pool,
    the write task only cuts and stores; same bytes as the in-process build."""
    import ray
    import yaml

    from tests.factories_recipes import REPO, small_aloha

    spec_doc = {"name": "recipe_stream", "frames": {"size": [32, 32]}, "shards": {"episodes_per_shard": 2},
                "sources": [{"kind": "hdf5", "path": str(small_aloha(tmp_path / "a.hdf5", 3, 16)), "name": "aloha"}],
                "stages": [{"name": "vae", "model": str(REPO / "tokenizers/vae/demo-wan"), "cameras": ["top"],
                            "device": "cpu"},
                           {"name": "motion"}],
                "samples": {"stride": 4, "fields": {"z": {"from": "vae.latents", "offsets": {"start": -1, "stop": 1},
                                                          "index": "rows"},
                                                    "zm": {"from": "motion.zm", "offsets": [0]}}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_doc))
    spec = load_spec(path)
    run_job(spec, tmp_path / "local", executor="local", show_progress=False)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    try:
        remote = run_job(spec, tmp_path / "ray", executor="ray-stages", show_progress=False)
    finally:
        ray.shutdown()
    assert remote.complete and remote.num_errors == 0
    assert _shas(tmp_path / "ray") == _shas(tmp_path / "local")
    assert validate_store(tmp_path / "ray") == []
    assert_accounted(tmp_path / "ray")
