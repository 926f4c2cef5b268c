"""``OUT/errors.jsonl``: one JSON record per rejected input, so failed inputs can be found and retried.

A record is ``{"file", "episode", "stage", "reason", "unit"}`` (``episode`` and ``unit`` may be null).
The file is written atomically, records sorted by (file, episode, unit, stage, reason) and exact
duplicates dropped, so the same failures always give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from motiondata.errors import StoreError
from motiondata.store.layout import atomic_write_text, errors_file

ERROR_KEYS = ("file", "episode", "stage", "reason", "unit")


def error_record(file: str | Path, episode: str | None, stage: str, reason: str,
                 unit: str | None = None) -> dict[str, Any]:
    """One error record; ``reason`` should say what failed and how to fix it."""
    return {"file": str(file), "episode": None if episode is None else str(episode), "stage": str(stage),
            "reason": str(reason), "unit": None if unit is None else str(unit)}


def _sort_key(rec: dict[str, Any]) -> tuple[str, ...]:
    return tuple("" if rec.get(k) is None else str(rec[k]) for k in ("file", "episode", "unit", "stage", "reason"))


def check_record(rec: Any, where: str = "error record") -> None:
    if not isinstance(rec, dict):
        raise StoreError(f"{where}: is {type(rec).__name__}, not a dict; build it with error_record()")
    missing = [k for k in ("file", "stage", "reason") if not isinstance(rec.get(k), str)]
    if missing:
        raise StoreError(f"{where}: {missing} missing or not strings; build it with error_record()")
    for k in ("episode", "unit"):
        if rec.get(k) is not None and not isinstance(rec[k], str):
            raise StoreError(f"{where}: {k!r} must be a string or null, got {rec[k]!r}")


def write_errors(out: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write all records (sorted, de-duplicated) to ``OUT/errors.jsonl``; an empty list writes an empty file."""
    lines = set()
    for i, rec in enumerate(records):
        check_record(rec, f"error record {i}")
        lines.add((_sort_key(rec), json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)))
    text = "".join(line + "\n" for _, line in sorted(lines))
    path = errors_file(out)
    atomic_write_text(path, text)
    return path


def read_errors(out: str | Path) -> list[dict[str, Any]]:
    """All records of ``OUT/errors.jsonl`` (``[]`` when the file is absent)."""
    path = errors_file(out)
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise StoreError(f"{path}:{n}: not JSON ({err}); rewrite the file with write_errors()") from err
        check_record(rec, f"{path}:{n}")
        records.append(rec)
    return records
