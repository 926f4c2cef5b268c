"""Input fingerprints: what a shard was built from, so a resumed job can tell whether an input changed.

A unit's fingerprint is ``{"unit": <hash of the reader's unit dict>, "files": {path: <file fingerprint>}}``
over every ``"file"`` the unit names (readers put the episode's file there; LeRobot units also name
their videos). A file fingerprint is ``"<size>:sha256:<digest>"`` for small files (content, so a
``touch`` or a copy does not count as a change) and ``"<size>:mtime:<mtime_ns>"`` for the rest
(cheap: planning never reads large inputs). An object-store URL (``s3://``, ``gs://``: a remote video
folder's files) is ``"<size>:etag:<ETag>"`` from one metadata request (the ETag changes with the content).
Other paths that are not files (hub ids) are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from motiondata.errors import MotionDataError
from motiondata.store import objstore

SMALL_FILE = 1 << 16  # files up to 64 KiB are fingerprinted by content


def url_fingerprint(url: str) -> str | None:
    """``size:etag:…`` of an object (``size:mtime:…`` where the store gives no ETag); ``None`` if it is gone."""
    from motiondata.sources.remote_input import object_stamp

    try:
        fs, root = objstore.filesystem(url)
        info = fs.info(root)
    except (OSError, ValueError, MotionDataError):  # missing object, unreachable store: read by the shard task, recorded there
        return None
    if info.get("type", "file") != "file":
        return None
    size, etag, mtime = object_stamp(info)
    kind, value = ("etag", etag.strip('"')) if etag else ("mtime", str(mtime))
    return f"{size}:{kind}:{value}"


def file_fingerprint(path: str) -> str | None:
    """``size:sha256:…`` (small files) or ``size:mtime:…`` of a local file, ``size:etag:…`` of an object URL;
    ``None`` if it is neither."""
    if "://" in path:
        return url_fingerprint(path) if objstore.is_remote(path) else None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    if st.st_size <= SMALL_FILE:
        try:
            with open(path, "rb") as fh:
                return f"{st.st_size}:sha256:{hashlib.sha256(fh.read()).hexdigest()[:16]}"
        except OSError:
            return None
    return f"{st.st_size}:mtime:{st.st_mtime_ns}"


def unit_files(unit: Any, root: str) -> list[str]:
    """Every string under a ``"file"`` key of ``unit`` (nested too), relative ones resolved against ``root``."""
    found: list[str] = []
    stack = [unit]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "file" and isinstance(value, str):
                    found.append(value if os.path.isabs(value) or "://" in value else os.path.join(root, value))
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(set(found))


def unit_fingerprint(unit: dict[str, Any], source_path: str, cache: dict[str, str | None]) -> dict[str, Any]:
    """Fingerprint of one unit; ``cache`` (path -> file fingerprint) avoids re-hashing files many units share."""
    root = source_path if os.path.isdir(source_path) else os.path.dirname(source_path)
    files = {}
    for path in unit_files(unit, root):
        if path not in cache:
            cache[path] = file_fingerprint(path)
        if cache[path] is not None:
            files[path] = cache[path]
    text = json.dumps(unit, sort_keys=True, default=str)
    return {"unit": hashlib.sha256(text.encode()).hexdigest()[:16], "files": files}


def _file_change(old: str, new: str | None) -> str:
    if new is None:
        return "file is gone"
    old_size, old_kind, _ = (old.split(":", 2) + ["", ""])[:3]
    new_size, new_kind, _ = (new.split(":", 2) + ["", ""])[:3]
    if old_size != new_size:
        return "size/mtime differ"
    if old_kind == new_kind and old_kind in ("sha256", "etag"):
        return "content differs"
    return "size/mtime differ" if "mtime" in (old_kind, new_kind) else "content differs"


def describe_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str | None:
    """Why ``new`` differs from the recorded ``old`` fingerprint (``None``: unchanged)."""
    if new is None:
        return "removed from the input"
    if not isinstance(old, dict):
        return "no fingerprint recorded"
    old_files, new_files = old.get("files", {}), new.get("files", {})
    for path in sorted(set(old_files) | set(new_files)):
        if path not in old_files:
            return f"{os.path.basename(path)} is new"
        if old_files[path] != new_files.get(path):
            return _file_change(old_files[path], new_files.get(path))
    if old.get("unit") != new.get("unit"):
        return "listing entry differs"
    return None
