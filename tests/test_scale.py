"""Issue 11 without Ray: stage resources, segments, pool sizing, and the precomputed shard writer's bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from motiondata.pipeline.plan import plan_shards
from motiondata.pipeline.ray_stages import (Segment, decode_unit, segments_of, stage_resources, wants_gpu,
                                            write_shard_from)
from motiondata.pipeline.ray_stream import pool_sizes
from motiondata.pipeline.registry import BoundStage
from motiondata.pipeline.runner import run_job
from motiondata.pipeline.shard_task import job_stages
from motiondata.pipeline.spec import load_spec
from motiondata.store import layout
from tests.factories_pipeline import write_libero_hdf5, write_spec
from tests.factories_scale import StandInEncoder
from tests.reliability.accounting import assert_accounted

STANDIN = "tests.factories_scale:StandInEncoder"


class _Cpu:
    name = "cpu"


def _shas(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / layout.SHARDS_DIR).glob("*"))
            if p.suffix in (".tar", ".json", ".bin")}


def test_stage_resources_come_from_the_stage_and_cpu_pinning_wins():
    assert stage_resources(StandInEncoder(gpus=0.5))["num_gpus"] == 0.5
    assert stage_resources(_Cpu())["num_gpus"] == 0.0
    from motiondata.encode.vae import VaeStage

    assert VaeStage.num_gpus == 1.0
    pinned = type("Pinned", (), {"num_gpus": 1.0, "device": "cpu"})()
    assert stage_resources(pinned)["num_gpus"] == 0.0


def test_segments_group_consecutive_stages_by_kind():
    stages = [BoundStage(StandInEncoder(gpus=1.0)), BoundStage(StandInEncoder(gpus=0.25)), BoundStage(_Cpu()),
              BoundStage(StandInEncoder(gpus=0.5))]
    segments = segments_of(stages)
    assert [(s.kind, s.stages) for s in segments] == [("cpu", ()), ("gpu", (0, 1)), ("cpu", (2,)), ("gpu", (3,))]
    assert segments[1].num_gpus == 1.0 and wants_gpu(stages) and not wants_gpu([BoundStage(_Cpu())])


def test_pools_split_gpus_between_segments_and_allow_fractions():
    one = [Segment("cpu", ()), Segment("gpu", (0,), 1.0)]
    assert pool_sizes(one, 2, 100, 0) == {1: (2, 1.0)}
    assert pool_sizes([Segment("cpu", ()), Segment("gpu", (0,), 0.25)], 2, 100, 0) == {1: (8, 0.25)}
    assert pool_sizes([Segment("cpu", ()), Segment("gpu", (0,), 0.25)], 2, 100, 3) == {1: (3, 0.25)}
    two = [Segment("cpu", ()), Segment("gpu", (0,), 1.0), Segment("cpu", (1,)), Segment("gpu", (2,), 1.0)]
    assert pool_sizes(two, 1, 100, 0) == {1: (1, 0.5), 3: (1, 0.5)}  # never two pools waiting on one GPU
    assert pool_sizes(one, 0, 100, 0) == {1: (2, 0.0)}  # no GPU: CPU actors


def test_precomputed_shard_writer_matches_the_in_process_build(tmp_path):
    hdf5 = write_libero_hdf5(tmp_path / "a.hdf5", episodes=3, steps=8, size=16, nan_demo=1)
    spec = load_spec(write_spec(tmp_path / "spec.yaml", [{"kind": "hdf5", "path": str(hdf5), "name": "a"}],
                                stages=[{"name": STANDIN, "sleep": 0.0}], per_shard=2, size=[16, 16]))
    local = run_job(spec, tmp_path / "local", executor="local", show_progress=False)
    plans, _ = plan_shards(spec)
    segments = segments_of(job_stages(spec))
    out = tmp_path / "pieces"
    run_job(spec, out, executor="local", show_progress=False)  # same store layout, then rewrite each shard
    for plan in plans:
        results = [decode_unit(spec, segments[0], entry)[1] for entry in plan.units]
        from motiondata.pipeline.ray_stages import run_segment

        results = run_segment(spec, segments[1], results, [e["unit"]["file"] for e in plan.units])
        write_shard_from(spec, plan, str(out), *results)
    assert local.num_errors == 1 and _shas(out) == _shas(tmp_path / "local")
    assert_accounted(out)
