"""The build's progress bar: shards done of planned, episodes and frames per second, elapsed time and ETA."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]shards"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[episodes]} episodes {task.fields[rate]}"), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), transient=False)


class Throughput:
    """Episodes and frames per second (and the shards' ETA) for the progress bar and the log."""

    def __init__(self, progress: Progress, bar: Any, out: Path):
        self.clock, self.progress, self.bar, self.out = time.monotonic, progress, bar, out
        self.start, self.episodes, self.frames = self.clock(), 0, 0

    def __call__(self, manifest: dict[str, Any] | None = None) -> None:
        manifest = manifest or {}
        episodes = manifest.get("episodes", [])
        self.episodes += len(episodes)
        self.frames += manifest["frames"] if "frames" in manifest else stored_frames(self.out, episodes)
        self.progress.update(self.bar, advance=1, episodes=self.episodes, rate=self.rate())

    def rate(self) -> str:
        seconds = max(self.clock() - self.start, 1e-6)
        return f"({self.episodes / seconds:.1f} ep/s, {self.frames / seconds:.0f} frames/s)"


def stored_frames(out: Path, episodes: list[str]) -> int:
    """Frames of stored episodes (their Zarr groups' ``length``); 0 where a group cannot be read."""
    from motiondata.store.episodes_zarr import episode_attrs

    frames = 0
    for episode in episodes:
        try:
            frames += int(episode_attrs(out, episode).get("length", 0))
        except Exception:  # progress is informative only
            continue
    return frames
