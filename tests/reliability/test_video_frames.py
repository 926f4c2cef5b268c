"""Right frames from real files (issue 9, item 5).

Every stored frame is compared with a frame-exact reference: all frames of the file decoded sequentially
with PyAV (no seek), picked by index (PSNR >= 35 dB, and the frame counter drawn into each frame must
match). Videos are made here with PyAV: mp4/h264 (with and without B-frames), AVI (mpeg4, cinepak),
mkv/VP9, AV1, variable frame rate, display rotations/flips, and files whose header declares more frames
than they hold. ``RUN_GAP = 0`` forces a seek before every wanted frame, so the seek path is proven too.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from motiondata.errors import SourceError
from motiondata.sources import video_pyav
from motiondata.sources.video_decode import read_frames, read_frames_at_timestamps, timeline_of
from motiondata.sources.video_folder import VideoFolderSource
from tests.factories_video import (counter_frames, counter_ids, ffmpeg_rgb, has_codec, patch_avi_keyframes, psnr,
                                   reference_decode, truncate_copy, write_pyav)

MIN_PSNR = 35.0
FRAMES = counter_frames(40)  # 4 s at 10 fps, a keyframe every 8 frames
CODECS = {  # name: (file, write_pyav arguments)
    "mp4-h264": ("v.mp4", {"codec": "libx264", "options": {"qp": "0"}}),
    "mp4-h264-bframes": ("v.mp4", {"codec": "libx264", "options": {"crf": "8"}, "max_b_frames": 3}),
    "avi-mpeg4": ("v.avi", {"codec": "mpeg4", "options": {"qscale": "1"}}),
    "avi-mpeg4-bframes": ("v.avi", {"codec": "mpeg4", "options": {"qscale": "1"}, "max_b_frames": 2}),
    "avi-cinepak": ("v.avi", {"codec": "cinepak", "pix_fmt": "rgb24"}),
    "mkv-vp9": ("v.mkv", {"codec": "libvpx-vp9", "options": {"lossless": "1"}}),
    "mkv-av1": ("v.mkv", {"codec": "libsvtav1", "options": {"crf": "4"}}),
    "mp4-av1": ("v.mp4", {"codec": "libsvtav1", "options": {"crf": "4"}}),
}
FALLBACK = "reading from the start"


def make(tmp_path, name: str, frames: np.ndarray = FRAMES, **extra):
    file, kwargs = CODECS[name]
    if not has_codec(kwargs["codec"]):
        pytest.skip(f"this PyAV build has no {kwargs['codec']} encoder, so no {name} file can be made here")
    path = write_pyav(tmp_path / file, frames, **{**kwargs, **extra})
    return str(path), reference_decode(path)[0]


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert psnr(got, want) >= MIN_PSNR
    assert counter_ids(got) == counter_ids(want)


@pytest.mark.parametrize("run_gap", [video_pyav.RUN_GAP, 0], ids=["default", "seek-every-frame"])
@pytest.mark.parametrize("name", sorted(CODECS))
def test_frames_match_a_sequential_reference(tmp_path, monkeypatch, caplog, name, run_gap):
    path, ref = make(tmp_path, name)
    assert counter_ids(ref) == list(range(40))
    monkeypatch.setattr(video_pyav, "RUN_GAP", run_gap)
    with caplog.at_level(logging.INFO, logger="motiondata.sources.video_pyav"):
        assert_same(read_frames(path), ref)
        assert_same(read_frames(path, start=25, stop=33), ref[25:33])
        picks = [37, 3, 20, 20, 11, 39, 0]
        assert_same(read_frames(path, indices=picks), ref[picks])
    assert FALLBACK not in caplog.text  # every seek was verified and used: no silent slow path
    with pytest.raises(SourceError, match="requested frame 41 but only 40 frames"):
        read_frames(path, indices=[2, 41])


@pytest.mark.parametrize("name", ["avi-mpeg4", "mkv-vp9", "mp4-h264-bframes"])
def test_folder_clips_hold_the_right_frames(tmp_path, name):
    path, ref = make(tmp_path, name)
    src = VideoFolderSource(path, clip_seconds=1.0, stride_seconds=0.7, fps=5)
    units = src.units()
    assert [(u["start"], u["stop"]) for u in units] == [(0, 10), (7, 17), (14, 24), (21, 31), (28, 38)]
    for unit in units:
        ep = src.read(unit)
        assert_same(ep.rgb["video"], ref[unit["start"]:unit["stop"]:2])
        assert ep.fps == 5.0 and ep.metadata["declared_frames"] == ep.metadata["decoded_frames"] == 40


@pytest.mark.parametrize("name", ["mp4-h264", "mkv-vp9"])
def test_variable_frame_rate_by_timestamp(tmp_path, monkeypatch, name):
    steps = np.random.default_rng(1).integers(20, 200, 39)
    pts = np.concatenate([[0], np.cumsum(steps)]).tolist()  # milliseconds, irregular
    path, ref = make(tmp_path, name, pts=pts)
    times = np.array(pts) / 1000.0
    monkeypatch.setattr(video_pyav, "RUN_GAP", 0)
    assert_same(read_frames(path, indices=[30, 5, 17]), ref[[30, 5, 17]])
    assert_same(read_frames_at_timestamps(path, times[[33, 2]], tolerance_s=1e-3), ref[[33, 2]])
    timeline = timeline_of(path)
    assert timeline.variable_rate and np.allclose(timeline.times, times)
    src = VideoFolderSource(path, clip_seconds=1.0)
    for k, unit in enumerate(src.units()):
        inside = np.flatnonzero((times >= k) & (times < k + 1))  # the frames presented in [k, k + 1) s
        ep = src.read(unit)
        assert_same(ep.rgb["video"], ref[inside])
        assert np.allclose(ep.metadata["frame_times"], times[inside])
    resampled = VideoFolderSource(path, fps=8)
    ep = resampled.read(resampled.units()[0])
    targets = np.arange(ep.length) / 8
    assert_same(ep.rgb["video"], ref[np.searchsorted(times, targets + 1e-6, side="right") - 1])


def _matrix(a: int, b: int, c: int, d: int) -> list[int]:
    return [a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30]


ROTATIONS = {"rot90": ({"rotation": 90}, lambda r: np.rot90(r, 1, axes=(1, 2))),
             "rot180": ({"rotation": 180}, lambda r: r[:, ::-1, ::-1]),
             "rot270": ({"rotation": 270}, lambda r: np.rot90(r, -1, axes=(1, 2))),
             "hflip": ({"matrix": _matrix(-1, 0, 0, 1)}, lambda r: r[:, :, ::-1]),
             "transpose": ({"matrix": _matrix(0, 1, 1, 0)}, lambda r: r.transpose(0, 2, 1, 3))}


@pytest.mark.parametrize("case", sorted(ROTATIONS))
def test_display_matrix_is_applied_like_ffmpeg(tmp_path, case):
    extra, upright = ROTATIONS[case]
    path, ref = make(tmp_path, "mp4-h264", FRAMES[:12], **extra)
    want = upright(ref)
    got = read_frames(path)
    assert got.shape == want.shape and psnr(got, want) >= MIN_PSNR
    cli = ffmpeg_rgb(path)  # the ffmpeg CLI autorotates: an independent reference when installed
    if cli is not None:
        assert psnr(got, cli) >= MIN_PSNR
    assert psnr(read_frames_at_timestamps(path, [0.5], 1e-3), want[5:6]) >= MIN_PSNR
    src = VideoFolderSource(path)
    ep = src.read(src.units()[0])
    assert psnr(ep.rgb["video"], want) >= MIN_PSNR
    assert ep.metadata["display_rotation"] == {"rot90": 90, "rot180": -180, "rot270": -90, "hflip": -180,
                                               "transpose": -90}[case]  # as ffprobe reports the matrix


@pytest.mark.parametrize("name,fraction", [("avi-mpeg4", 0.6), ("mp4-h264", 0.6), ("mkv-vp9", 0.5)])
def test_header_declaring_more_frames_than_the_file_holds(tmp_path, name, fraction):
    """An AVI/mp4 cut short (header intact: the AVI avih count, the mp4 moov up front) and an mkv whose
    header duration outlives its data: clips cover what decodes, nothing is mislabelled or recorded twice."""
    extra = {"container_options": {"movflags": "faststart"}} if name == "mp4-h264" else {}
    full, ref = make(tmp_path, name, counter_frames(40, noise=True), **extra)
    path = str(truncate_copy(tmp_path / CODECS[name][0], tmp_path / ("cut" + CODECS[name][0][1:]), fraction))
    held = timeline_of(path).frames
    assert 5 <= held < 40
    src = VideoFolderSource(path, clip_seconds=0.5)
    units = src.units()
    assert all("error" not in u for u in units) and len(units) == held // 5  # only full clips that exist
    for unit in units:
        ep = src.read(unit)
        assert_same(ep.rgb["video"], ref[unit["start"]:unit["stop"]])
        assert ep.metadata["decoded_frames"] == held and ep.metadata["declared_frames"] == 40
    whole = VideoFolderSource(path)
    ep = whole.read(whole.units()[0])
    assert_same(ep.rgb["video"], ref[:held])


def test_a_lying_avi_index_is_caught_and_read_exactly(tmp_path, monkeypatch, caplog):
    """An AVI index that marks every frame a keyframe makes a seek land on a P-frame: the first decoded frame
    is not a keyframe, so the read starts over from the start and still returns the right frames."""
    path, ref = make(tmp_path, "avi-mpeg4")
    lying = str(patch_avi_keyframes(path, tmp_path / "lying.avi"))
    monkeypatch.setattr(video_pyav, "RUN_GAP", 0)
    with caplog.at_level(logging.INFO, logger="motiondata.sources.video_pyav"):
        assert_same(read_frames(lying, indices=[37, 3, 20, 22]), ref[[37, 3, 20, 22]])
    assert FALLBACK in caplog.text


def test_a_stream_without_timestamps_is_counted(tmp_path):
    path = str(write_pyav(tmp_path / "raw.h264", FRAMES, codec="libx264", options={"qp": "0"}))
    ref = reference_decode(tmp_path / "raw.h264")[0]
    assert not timeline_of(path).keyed
    assert_same(read_frames(path, indices=[33, 4, 4]), ref[[33, 4, 4]])


def test_a_file_with_no_intact_frame_is_one_record(tmp_path):
    write_pyav(tmp_path / "v.avi", counter_frames(20, noise=True), codec="mpeg4")
    data = (tmp_path / "v.avi").read_bytes()
    movi = data.index(b"movi") + 4
    (tmp_path / "v.avi").write_bytes(data[: movi + 20])  # header intact, first frame cut
    (unit,) = VideoFolderSource(str(tmp_path), clip_seconds=0.5).units()
    assert "could not decode the video" in unit["error"] and "declares 20" in unit["error"]
