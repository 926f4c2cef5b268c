"""A plugin stage from any importable module (`name: package.module:factory`): built, run in recipe mode,
and recorded in manifest.json with its package and version."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import yaml

from motiondata.pipeline.runner import run_job
from motiondata.pipeline.spec import load_spec
from motiondata.pipeline.stage import config_hash_of
from motiondata.pipeline.tables import Table
from motiondata.store.shards import iter_shard
from tests.factories_recipes import small_aloha


@dataclass(frozen=True)
class SpeedStage:
    """Per-frame action speed |a_t - a_{t-1}|: a plugin declaring one frame-axis float32 table."""

    prefix: str | None = None
    name: str = "speed"

    def config_hash(self) -> str:
        return config_hash_of(self)

    def build_tables(self, item):
        actions = item["episode"].actions
        speed = np.r_[0.0, np.linalg.norm(np.diff(actions, axis=0), axis=1)].astype(np.float32)[:, None]
        item["tables"][f"{self.prefix or 'speed'}.norm"] = Table(speed, np.arange(len(speed)), "frame")
        return item


def test_plugin_stage_runs_and_is_recorded(tmp_path):
    spec = {"name": "plugin", "sources": [{"kind": "hdf5", "path": str(small_aloha(tmp_path / "a.hdf5", 1, 12)),
                                           "name": "aloha"}],
            "stages": [{"name": "tests.test_plugin_manifest:SpeedStage", "as": "motion_speed"}],
            "samples": {"stride": 4, "fields": {"speed": {"from": "motion_speed.norm", "offsets": [0, 1]}}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_job(load_spec(path), tmp_path / "out", executor="local", show_progress=False)
    samples = list(iter_shard(tmp_path / "out" / "shards" / "shard-000000.tar"))
    assert [s["meta"]["anchor"] for s in samples] == [0, 4, 8]
    assert samples[1]["speed"].shape == (2, 1) and samples[1]["speed"].dtype == np.float32
    stage = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"][0]
    assert stage["plugin"] == "tests.test_plugin_manifest:SpeedStage" and stage["name"] == "speed"
    assert "version" in stage


def test_unknown_plugin_parameters_list_the_valid_ones():
    from motiondata.errors import SpecError
    from motiondata.pipeline.registry import build_stage

    with pytest.raises(SpecError, match="valid parameters: prefix"):
        build_stage({"name": "tests.test_plugin_manifest:SpeedStage", "sped": 1})
    with pytest.raises(SpecError, match="cannot import"):
        build_stage({"name": "no_such_pkg.mod:Stage"})
