"""Error types. Every error says what is wrong and how to fix it."""

from __future__ import annotations


class MotionDataError(Exception):
    """Base class of all motiondata errors."""


class EpisodeValidationError(MotionDataError, ValueError):
    """An episode's fields disagree (length, dtype, shape, non-finite values)."""

    def __init__(self, episode_id: str, field: str, problem: str, fix: str):
        self.episode_id, self.field, self.problem, self.fix = episode_id, field, problem, fix
        super().__init__(f"episode {episode_id!r}: field {field!r}: {problem}. Fix: {fix}")


class SourceError(MotionDataError):
    """An input file could not be read. Carries the file and the reason for the error record."""

    def __init__(self, file: str, reason: str, episode: str | None = None):
        self.file, self.reason, self.episode = str(file), reason, episode
        where = f"{file}" + (f" [{episode}]" if episode else "")
        super().__init__(f"{where}: {reason}")


class SpecError(MotionDataError, ValueError):
    """A pipeline spec is invalid."""


class StoreError(MotionDataError):
    """A store is missing, incomplete or corrupt. Names the shard and key when known."""

    def __init__(self, message: str, shard: str | None = None, key: str | None = None):
        self.shard, self.key = shard, key
        parts = [p for p in (f"shard {shard}" if shard else "", f"key {key}" if key else "") if p]
        super().__init__((", ".join(parts) + ": " if parts else "") + message)
