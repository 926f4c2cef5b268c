"""The job on Ray: a local cluster (loopback only) and a two-node ray.cluster_utils.Cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout
from motiondata.store.validate import validate_store
from tests.factories_pipeline import write_libero_hdf5, write_spec, write_video_folder

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _spec(tmp_path: Path) -> Path:
    hdf5 = write_libero_hdf5(tmp_path / "libero.hdf5", episodes=3, nan_demo=1)
    videos = write_video_folder(tmp_path / "videos", good=1)
    return write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(hdf5), "name": "libero"},
                                                {"kind": "video", "path": str(videos), "name": "web"}], size=[24, 24])


def test_ray_multi_node_cluster_matches_in_process_build(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    spec = load_spec(_spec(tmp_path))
    local = run_job(spec, tmp_path / "local", executor="local", show_progress=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        result = run_job(spec, tmp_path / "ray", executor="ray", show_progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert not result.failed and result.num_samples == local.num_samples > 0
    for tar in sorted((tmp_path / "local" / "shards").glob("*.tar")):
        assert (tmp_path / "ray" / "shards" / tar.name).read_bytes() == tar.read_bytes()
    errors = layout.errors_file(tmp_path / "ray").read_text().splitlines()
    assert len(errors) == local.num_errors >= 4  # NaN demo + 3 corrupt videos
    assert validate_store(tmp_path / "ray") == []
    job = json.loads(layout.job_manifest(tmp_path / "ray").read_text())
    assert job["complete"] and job["num_errors"] == len(errors)
