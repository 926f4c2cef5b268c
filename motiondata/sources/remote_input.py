"""Inputs on object storage: a source ``path`` (or ``--input``) may be an fsspec URL (``s3://bucket/libero``,
``gs://...``, ``file:///data/x.hdf5``).

The readers are built on local files (h5py, PyAV, pyarrow, zarr), so a remote input is *localized*: copied
into a per-node cache ``<staging base>/inputs/<hash of the URL's folder>/<name>`` (the staging base is
``$MOTIONDATA_STAGING``, default ``~/.cache/motiondata/staging``, as in ``motiondata.store.objstore``).

- A file is downloaded once, to a temporary name beside its final one, then renamed (atomic: a reader never
  sees half a file), with its remote modification time set on it (``os.utime``), so input fingerprints
  (size + mtime of large files) are the same on every node. A hidden ``.<name>.remote.json`` records the
  object's size, ETag and modification time; a later call reuses the file while they still match, and
  downloads it again otherwise.
- ``hdf5``, ``lerobot``, ``replay_buffer`` and ``rlds`` inputs are localized whole when the source is opened
  (a folder: every object under the prefix): planning needs the disk space of the dataset on the driver,
  and each shard task re-checks sizes and ETags (one listing) and downloads only what it lacks.
- ``video`` folders are listed remotely at planning time (the clip plan streams each object once through
  PyAV's demuxer, nothing is written to disk) and each video is downloaded by the shard task that reads
  it, with its caption sidecar (``<stem>.txt`` / ``<stem>.json``). ``split: shots`` and ``min_motion``
  decode frames at planning, so they localize the video there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from motiondata.errors import MotionDataError, SourceError, SpecError
from motiondata.store import objstore

log = logging.getLogger(__name__)

LISTED_REMOTELY = ("video",)  # kinds that take a URL themselves; the others get a localized path
SIDECAR = ".{name}.remote.json"
CAPTION_SUFFIXES = (".txt", ".json")


def check_url(url: str) -> None:
    """A SpecError line naming the fix when ``url``'s scheme is unknown or its fsspec package is missing."""
    try:
        objstore.filesystem(url)
    except MotionDataError as err:
        raise SpecError(str(err)) from None


def input_path(kind: str, path: str) -> str:
    """The path a ``kind`` reader opens for the spec's ``path``: ``file://`` URLs as local paths, remote URLs
    localized (``video`` keeps its URL and localizes per file)."""
    if objstore.scheme_of(path) in ("file", "local"):
        return str(objstore.local_path(path))
    if not objstore.is_remote(path) or kind in LISTED_REMOTELY:
        return path
    return localize(path)


def cache_dir(folder_url: str) -> Path:
    """The local folder the objects under ``folder_url`` are cached in (the same on every node)."""
    base = objstore.staging_dir(folder_url).parent
    return base / "inputs" / hashlib.sha1(folder_url.rstrip("/").encode()).hexdigest()[:16]


def object_stamp(info: dict[str, Any]) -> tuple[int, str, float | None]:
    """``(size, etag, mtime seconds)`` of an object from ``fs.info``/``fs.find(detail=True)``."""
    etag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("md5") or "")
    when = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("created")
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    mtime = when.timestamp() if isinstance(when, datetime) else (float(when) if when is not None else None)
    return int(info.get("size") or 0), etag, mtime


def _fresh(target: Path, stamp: tuple[int, str, float | None]) -> bool:
    sidecar = target.with_name(SIDECAR.format(name=target.name))
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8"))
        return target.stat().st_size == stamp[0] and (recorded.get("size"), recorded.get("etag"),
                                                     recorded.get("mtime")) == stamp
    except (OSError, ValueError):
        return False


def _download(fs: Any, items: list[tuple[str, Path, tuple[int, str, float | None]]]) -> None:
    """Fetch ``(remote path, target, stamp)`` items concurrently into temporary names, then rename each."""
    temps = []
    for _, target, _ in items:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        temps.append(tmp)
    try:
        fs.get([remote for remote, _, _ in items], temps)
        for tmp, (remote, target, (size, etag, mtime)) in zip(temps, items):
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            os.replace(tmp, target)
            sidecar = target.with_name(SIDECAR.format(name=target.name))
            record = json.dumps({"url": fs.unstrip_protocol(remote), "size": size, "etag": etag, "mtime": mtime})
            fd, side_tmp = tempfile.mkstemp(prefix=sidecar.name, suffix=".tmp", dir=target.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(record)
            os.replace(side_tmp, sidecar)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _sync(fs: Any, objects: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    """Download the objects (remote path -> (target, info)) whose cached copy is missing or stale."""
    stale = [(remote, target, object_stamp(info)) for remote, (target, info) in sorted(objects.items())
             if not _fresh(target, object_stamp(info))]
    if stale:
        log.info("downloading %d input object(s) (%d bytes) into %s", len(stale), sum(s[2][0] for s in stale),
                 stale[0][1].parent)
        _download(fs, stale)


def _info(fs: Any, root: str, url: str) -> dict[str, Any]:
    try:
        return fs.info(root)
    except FileNotFoundError:
        raise SourceError(url, "input does not exist (no such object or prefix); check the source's path URL "
                               "and the credentials") from None


def localize_file(url: str, info: dict[str, Any] | None = None) -> str:
    """The cached local copy of the object at ``url`` (downloaded when missing or changed)."""
    fs, root = objstore.filesystem(url)
    info = info or _info(fs, root, url)
    target = cache_dir(posixpath.dirname(url.rstrip("/"))) / posixpath.basename(root)
    _sync(fs, {root: (target, info)})
    return str(target)


def localize(url: str) -> str:
    """A local copy of the file or of every object under the prefix ``url``; returns its local path."""
    fs, root = objstore.filesystem(url)
    info = _info(fs, root, url)
    if info.get("type") != "directory":
        return localize_file(url, info)
    found = fs.find(root, detail=True)
    folder = cache_dir(url)
    objects = {path: (folder / path[len(root) + 1:], meta) for path, meta in found.items()
               if path.startswith(root + "/") and not path.endswith("/") and meta.get("type") != "directory"}
    if not objects:
        raise SourceError(url, "input prefix holds no objects; check the source's path URL")
    _sync(fs, objects)
    _prune(folder, {target for target, _ in objects.values()})
    return str(folder)


def _prune(folder: Path, kept: set[Path]) -> None:
    """Delete cached files of objects that are gone from the prefix (a reader must not see them)."""
    keep = kept | {t.with_name(SIDECAR.format(name=t.name)) for t in kept}
    for path in folder.rglob("*"):
        if path.is_file() and path not in keep and not path.name.endswith(".tmp"):
            log.info("%s is no longer in the input; removing its cached copy", path)
            path.unlink()


def list_files(url: str, extensions: tuple[str, ...]) -> list[str]:
    """URLs of the objects under ``url`` (or ``url`` itself, when it is one object) whose name ends in one
    of ``extensions`` (lower-case, with the dot), sorted by their path below ``url``; nothing is downloaded."""
    fs, root = objstore.filesystem(url)
    info = _info(fs, root, url)
    if info.get("type") != "directory":
        return [url]
    prefix = url.rstrip("/")
    found = [path for path in fs.find(root) if path.startswith(root + "/")
             and posixpath.splitext(path)[1].lower() in extensions]
    return sorted(f"{prefix}/{path[len(root) + 1:]}" for path in found)


def localize_video(url: str) -> str:
    """The local copy of a remote video and of its caption sidecars (``<stem>.txt``/``.json``), side by side
    so ``read_caption`` finds them."""
    fs, root = objstore.filesystem(url)
    stem = posixpath.splitext(url)[0]
    for suffix in CAPTION_SUFFIXES:
        sidecar_root = objstore.filesystem(stem + suffix)[1]
        if fs.exists(sidecar_root):
            localize_file(stem + suffix)
    return localize_file(url)


def open_remote(url: str) -> Any:
    """A read-only, seekable file object on the object at ``url`` (streamed: nothing is written to disk)."""
    fs, root = objstore.filesystem(url)
    if _info(fs, root, url).get("size") == 0:
        raise SourceError(url, "video file is empty (0 bytes); re-download or re-encode it")
    return fs.open(root, "rb")
