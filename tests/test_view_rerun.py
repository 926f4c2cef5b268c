"""`motiondata view --rerun`: the recording opens with rerun's own reader and holds the expected entities."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from motiondata.cli import main
from tests.factories_view import one_thread, shared_view_store

pytestmark = pytest.mark.slow
RERUN = Path(sys.executable).parent / "rerun"


def test_rrd_holds_frames_reconstructions_flow_and_actions(tmp_path, capsys):
    pytest.importorskip("rerun", reason="rerun-sdk is not installed (requirements.txt)")
    rrd = tmp_path / "episode.rrd"
    with one_thread():
        code = main(["view", str(shared_view_store()), "--rerun", str(rrd), "--episode", "aloha_demo_0",
                     "--max-latents", "3"])
    assert code == 0 and rrd.stat().st_size > 10_000
    cli = str(RERUN) if RERUN.exists() else shutil.which("rerun")
    if cli is None:
        pytest.skip("the rerun CLI (installed with rerun-sdk) is not on PATH")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}  # no analytics prompt state
    verify = subprocess.run([cli, "rrd", "verify", str(rrd)], capture_output=True, text=True, env=env, timeout=60)
    assert verify.returncode == 0, verify.stderr
    printed = subprocess.run([cli, "rrd", "print", str(rrd)], capture_output=True, text=True, env=env, timeout=60)
    assert printed.returncode == 0, printed.stderr
    for entity in ("aloha_demo_0/rgb/top", "aloha_demo_0/rgb/angle", "aloha_demo_0/vae/vae.latents/recon",
                   "aloha_demo_0/vae/vae.latents/psnr", "aloha_demo_0/keyframes/keyframes.codes/decoded",
                   "aloha_demo_0/flow/flow.tracks/tracks", "aloha_demo_0/actions/raw/0",
                   "aloha_demo_0/actions/fast/13", "aloha_demo_0/text"):
        assert entity in printed.stdout, entity
    assert "aloha_demo_1" not in printed.stdout
