"""Shot-aware clips (PySceneDetect on real videos with hard cuts), the motion filter and frames.mode resizing."""

from __future__ import annotations

import numpy as np
import pytest

from motiondata.episode import Episode
from motiondata.errors import SpecError
from motiondata.pipeline.transforms import Resize, fit_box
from motiondata.sources import open_source
from tests.factories_pipeline import write_mp4

FPS = 10


def scene(t: int, seed: int, moving: bool, h: int = 48, w: int = 64) -> np.ndarray:
    """A textured background of its own colour, with a bright square that moves (or not)."""
    rng = np.random.default_rng(seed)
    tint = rng.integers(0, 256, size=3)
    base = (rng.integers(0, 60, size=(h, w, 3)) + tint * 0.7).clip(0, 255).astype(np.uint8)
    frames = np.repeat(base[None], t, axis=0)
    for i in range(t):
        x = (4 + (3 * i if moving else 0)) % (w - 12)
        frames[i, 16:28, x:x + 12] = 255 - tint
    return frames


def cut_video(tmp_path, moving=(True, False, True), lengths=(20, 20, 20)):
    """One mp4 of three shots with hard cuts between them; returns (path, first frame of each shot)."""
    shots = [scene(n, seed, m) for seed, (n, m) in enumerate(zip(lengths, moving))]
    path = write_mp4(tmp_path / "cuts.mp4", np.concatenate(shots), fps=FPS)
    return path, list(np.cumsum([0, *lengths[:-1]]))


def test_clips_never_straddle_a_cut(tmp_path):
    path, starts = cut_video(tmp_path)
    source = open_source("video", str(path), clip_seconds=0.8, split="shots", min_shot_seconds=0.5)
    units = source.units()
    found = sorted({u["shot"]["index"] for u in units})
    assert found == [0, 1, 2]
    bounds = starts + [60]
    for unit in units:
        shot = unit["shot"]["index"]
        assert bounds[shot] <= unit["start"] < unit["stop"] <= bounds[shot + 1]
        assert unit["id"].startswith(f"cuts_s{shot:03d}_c")
    assert [u["shot"]["start_seconds"] for u in units if u["clip"] == 0] == pytest.approx([0.0, 2.0, 4.0])
    episode = source.read(units[0])
    assert episode.metadata["shot"] == units[0]["shot"] and episode.length == 8


def test_without_split_a_clip_crosses_the_cut(tmp_path):
    path, _ = cut_video(tmp_path)
    units = open_source("video", str(path), clip_seconds=3.0).units()
    assert (units[0]["start"], units[0]["stop"]) == (0, 30) and "shot" not in units[0]


def test_short_shots_are_dropped(tmp_path):
    path, _ = cut_video(tmp_path, lengths=(20, 5, 20))
    units = open_source("video", str(path), split="shots", min_shot_seconds=1.0).units()
    assert [u["shot"]["index"] for u in units] == [0, 2]
    assert [(u["start"], u["stop"]) for u in units] == [(0, 20), (25, 45)]


def test_motion_filter_skips_static_clips_as_listing_problems(tmp_path):
    path, _ = cut_video(tmp_path)
    source = open_source("video", str(path), split="shots", min_motion=0.05)
    units = source.units()
    assert [u["shot"]["index"] for u in units] == [0, 2]
    problems = source.listing_problems
    assert len(problems) == 1 and problems[0]["skipped"] is True
    assert problems[0]["episode"] == "cuts_s001" and "near-static" in problems[0]["reason"]
    assert "min_motion" in problems[0]["reason"]


def test_a_skipped_clip_is_recorded_as_skip_not_as_damage(tmp_path):
    import json

    import yaml

    from motiondata.cli import main
    from motiondata.store.validate import validate_store

    path, _ = cut_video(tmp_path)
    spec = {"sources": [{"kind": "video", "path": str(path), "name": "web",
                         "options": {"split": "shots", "min_motion": 0.05}}],
            "frames": {"size": [32, 32]}, "windows": {"length": 5, "stride": 5}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["build", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--executor", "local",
                 "-q"]) == 0  # a clip left out on purpose is not a data problem
    job = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (job["num_errors"], job["num_skipped"], job["num_episodes"]) == (0, 1, 2)
    records = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["skip"]
    assert validate_store(tmp_path / "out") == []


def test_bad_shot_options_are_spec_errors(tmp_path):
    path, _ = cut_video(tmp_path)
    with pytest.raises(SpecError, match="split"):
        open_source("video", str(path), split="scenes")
    with pytest.raises(SpecError, match="min_motion"):
        open_source("video", str(path), min_motion=-1)


def _episode(frames: np.ndarray) -> Episode:
    depth = frames[..., 0].astype(np.float32) / 255.0 + 0.5
    return Episode(id="e", source="t", fps=10.0, rgb={"cam": frames}, depth={"cam": depth})


def test_resize_crop_keeps_aspect_and_centre():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 200  # the centre square of a 2:1 frame
    out = Resize((20, 20), "crop")(_episode(frames))
    assert out.rgb["cam"].shape == (2, 20, 20, 3) and out.depth["cam"].shape == (2, 20, 20)
    assert (out.rgb["cam"] == 200).all()  # only the centre survives, undistorted
    assert Resize((20, 20)).mode == "crop"


def test_resize_pad_letterboxes_with_invalid_depth():
    frames = np.full((1, 40, 80, 3), 120, np.uint8)
    out = Resize((40, 40), "pad")(_episode(frames))
    assert fit_box((40, 80), (40, 40), "pad") == ((20, 40), (-10, 0))
    rgb, depth = out.rgb["cam"][0], out.depth["cam"][0]
    assert (rgb[:10] == 0).all() and (rgb[30:] == 0).all() and (rgb[10:30] == 120).all()
    assert (depth[:10] == 0).all() and (depth[10:30] > 0).all()


def test_resize_stretch_and_bad_mode():
    frames = np.random.default_rng(0).integers(0, 255, (1, 40, 80, 3), dtype=np.uint8)
    assert Resize((20, 20), "stretch")(_episode(frames)).rgb["cam"].shape == (1, 20, 20, 3)
    with pytest.raises(SpecError, match="frames.mode"):
        Resize((20, 20), "zoom")
