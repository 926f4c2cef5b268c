"""`motiondata view`: the offline HTML report of a tiny recipe store (every stage decoded)."""

from __future__ import annotations

import json
import re

import pytest

from motiondata.cli import main
from motiondata.inspect.view_html import render_store
from tests.factories_view import one_thread, shared_view_store

pytestmark = pytest.mark.slow
SECTIONS = ("timeline", "frames", "keyframes", "flow", "motion", "actions", "text", "records")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    dest = tmp_path_factory.mktemp("view")
    with one_thread():
        return render_store(shared_view_store(), dest), dest


def test_index_and_one_page_per_episode(report):
    result, dest = report
    assert sorted(result.pages) == ["aloha_demo_0", "aloha_demo_1"]
    index = result.index.read_text()
    assert "aloha_demo_0/index.html" in index and "id='f-source'" in index  # filters
    summary = json.loads((dest / "view.json").read_text())
    first = summary["episodes"][0]
    assert first["vae_psnr"] > 10 and first["keyframe_psnr"] > 10 and 0 < first["flow_valid"] <= 1
    assert 0 < first["fast_error"] < 0.2 and first["render_seconds"] > 0


def test_every_section_and_every_image_is_local(report):
    result, _ = report
    for page in result.pages.values():
        text = page.read_text()
        for sid in SECTIONS:
            assert f"<section id='{sid}'" in text, sid
        assert not re.search(r"(src|href)=['\"](https?:)?//", text)  # nothing from the network
        images = re.findall(r"<img src='([^']+)'", text)
        assert len(images) >= 8
        for name in images:
            assert (page.parent / name).stat().st_size > 100, name


def test_page_shows_decoded_figures(report):
    result, _ = report
    text = result.pages["aloha_demo_0"].read_text()
    assert "decoded with the store's VAE" in text and "mean PSNR" in text
    assert "rounding bound" in text
    assert "pick up the cube" in text  # the instruction
    assert "stage versions" in text


def test_cli_view_one_episode(tmp_path, one_torch_thread, capsys):
    code = main(["view", str(shared_view_store()), "--episode", "aloha_demo_1", "--out", str(tmp_path / "v"),
                 "--max-latents", "2"])
    assert code == 0
    assert (tmp_path / "v" / "episodes" / "aloha_demo_1" / "index.html").is_file()
    assert not (tmp_path / "v" / "episodes" / "aloha_demo_0").exists()
    assert "wrote" in capsys.readouterr().out


def test_cli_view_refuses_a_missing_store(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
