"""The HTML report in a real, headless Chromium (system package) driven by playwright, network disabled.

Checks: no console errors, every <img> decoded (naturalWidth > 0), each section present for every stage of
the store, screenshots not blank (pixel variance), the index filters work. By default it renders the tiny
test store; MOTIONDATA_VIEW_STORE=out/demo opens the demo store instead, and MOTIONDATA_VIEW_SHOTS=docs/img
keeps one screenshot per section there (docs/inspect.md shows them).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from motiondata.inspect.view_html import render_store
from tests.factories_view import one_thread, shared_view_store

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
STAGE_SECTIONS = {"vae": "frames", "keyframes": "keyframes", "flow": "flow", "motion": "motion", "fast": "actions",
                  "text": "text"}


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
    if not Path(CHROMIUM).is_file():
        pytest.skip("Chromium is not installed: `apt-get install chromium` (the Makefile's test target does it "
                    "when root)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    store = Path(os.environ.get("MOTIONDATA_VIEW_STORE") or shared_view_store())
    dest = tmp_path_factory.mktemp("browser_view")
    with one_thread():
        wanted = [e for e in os.environ.get("MOTIONDATA_VIEW_EPISODES", "").split(",") if e]
        result = render_store(store, dest, episodes=wanted or None)
    return store, result


def _open(browser, url: str):
    context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                  else route.abort())
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="load")
    return context, page, errors


def _variance(png: bytes) -> float:
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32).var())


def _store_stages(store: Path) -> set[str]:
    import json

    stages = json.loads((store / "manifest.json").read_text())["spec"]["stages"]
    return {s["name"] for s in stages}


def test_episode_pages_render_offline_without_errors(browser, report):
    store, result = report
    shots = os.environ.get("MOTIONDATA_VIEW_SHOTS")
    for episode, path in result.pages.items():
        context, page, errors = _open(browser, path.resolve().as_uri())
        widths = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
        assert widths and all(w > 0 for _, w in widths), widths
        for stage in _store_stages(store) & set(STAGE_SECTIONS):
            assert page.locator(f"section#{STAGE_SECTIONS[stage]}").count() == 1, stage
        assert _variance(page.screenshot(full_page=False)) > 50.0
        if shots and episode == next(iter(result.pages)):
            Path(shots).mkdir(parents=True, exist_ok=True)
            for sid in ("timeline", "frames", "keyframes", "flow", "motion", "actions", "text", "records"):
                section = page.locator(f"section#{sid}")
                if section.count():
                    section.screenshot(path=str(Path(shots) / f"view_{sid}.png"))
        assert errors == [], errors
        context.close()


def test_index_filters_work_offline(browser, report):
    _, result = report
    context, page, errors = _open(browser, result.index.resolve().as_uri())
    rows = page.locator("#episodes tr[data-source]")
    total = rows.count()
    assert total == len(result.pages) and page.locator("#f-count").inner_text().endswith(f"{total} episodes")
    page.fill("#f-text", "no-such-episode-text")
    assert page.locator("#episodes tr[data-source]:not(.hidden)").count() == 0
    page.fill("#f-text", "")
    page.check("#f-errors")  # the tiny store has no error records
    visible = page.locator("#episodes tr[data-source]:not(.hidden)").count()
    assert visible == sum(int(rows.nth(i).get_attribute("data-errors")) > 0 for i in range(total))
    assert _variance(page.screenshot()) > 20.0
    if os.environ.get("MOTIONDATA_VIEW_SHOTS"):
        page.uncheck("#f-errors")
        page.screenshot(path=str(Path(os.environ["MOTIONDATA_VIEW_SHOTS"]) / "view_index.png"))
    assert errors == [], errors
    context.close()
