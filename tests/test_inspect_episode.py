"""`motiondata inspect --episode` (one episode, attrs, real fields, previews) and `validate --decode N`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from motiondata.cli import main
from tests.factories_view import copy_store, one_thread, shared_view_store

pytestmark = pytest.mark.slow
LOW = ["--min-vae-psnr", "5", "--min-keyframe-psnr", "5", "--min-flow-valid", "0.01"]


def test_episode_json_shows_only_that_episode_with_attrs(capsys):
    assert main(["inspect", str(shared_view_store()), "--episode", "aloha_demo_1", "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)["episode"]
    assert detail["id"] == "aloha_demo_1" and detail["fps"] == 10.0 and detail["length"] == 24
    assert detail["language"].startswith("pick up") and detail["file"].endswith("aloha.hdf5")
    assert detail["anchors"] == [0, 8, 16]
    assert "fast.tokens" in detail["fields"] and "fast.tokens_len" not in detail["fields"]
    assert detail["fields"]["fast.tokens"]["preview"].startswith("first ids ")
    assert detail["fields"]["actions"]["preview"].startswith("ranges [")
    assert detail["fields"]["flow.tracks"]["axis"] == "query"


def test_episode_text_is_plain_when_piped(capsys):
    assert main(["inspect", str(shared_view_store()), "--episode", "aloha_demo_0"]) == 0
    out = capsys.readouterr().out
    assert "episode aloha_demo_0" in out and "language" in out and "fast.tokens" in out
    assert "\x1b[" not in out and "# motiondata store" not in out  # no ANSI, no whole-store report


def test_unknown_episode_is_one_line(capsys):
    assert main(["inspect", str(shared_view_store()), "--episode", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lists the ids" in err


def test_validate_decode_passes_and_writes_figures(tmp_path, capsys):
    store = copy_store(tmp_path)
    with one_thread():
        code = main(["validate", str(store), "--quick", "--decode", "2", "--json", "--max-latents", "3", *LOW])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["problems"]
    stages = {c["stage"] for c in report["decode"]["checks"]}
    assert stages == {"vae", "keyframes", "fast", "flow"}
    text = (store / "report.md").read_text()
    assert "Decode checks" in text and "](decode/" in text
    for check in report["decode"]["checks"]:
        assert check["figure"] is None or (store / check["figure"]).is_file()


def test_validate_decode_names_stage_episode_and_figure(tmp_path, capsys):
    store = copy_store(tmp_path)
    with one_thread():
        code = main(["validate", str(store), "--quick", "--decode", "1", "--max-latents", "2",
                     "--min-vae-psnr", "60", "--min-keyframe-psnr", "5", "--min-flow-valid", "0.01"])
    out, err = capsys.readouterr()
    assert code == 1 and err.startswith("error: ")
    line = next(p for p in out.splitlines() if "stage vae" in p)
    assert "episode aloha_demo_" in line and "frame" in line and "PSNR" in line and "dB" in line


def test_validate_decode_catches_tampered_fast_tokens(tmp_path, capsys):
    store = copy_store(tmp_path)
    for episode in ("aloha_demo_0", "aloha_demo_1"):
        tokens = zarr.open_array(str(store / "episodes.zarr" / episode / "fast" / "tokens"), mode="r+")
        values = np.asarray(tokens[...])
        tokens[...] = np.roll(values, 1, axis=1)  # same ids, wrong order: decodes to other actions
    with one_thread():
        code = main(["validate", str(store), "--quick", "--decode", "3", "--max-latents", "1", *LOW])
    out = capsys.readouterr().out
    assert code == 1
    assert any("stage fast" in line and "round-trip error" in line for line in out.splitlines())


def test_decode_zero_is_a_usage_error(capsys):
    assert main(["validate", str(shared_view_store()), "--quick", "--decode", "0"]) == 2
    assert "--decode 0" in capsys.readouterr().err
