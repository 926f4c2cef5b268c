"""Validate (and inspect) a store on object storage (``s3://bucket/prefix``) with the local checks.

The store's small objects (manifests, partial stats, ``stats.json``, ``errors.jsonl``, every ``zarr.json``)
are copied into a temporary local folder with the store's layout; each shard tar is stood in by a sparse
file of the object's size and no Zarr chunk is copied. The local ``validate_store_report`` then runs on that
folder, and every problem names the URL instead of the temporary path; the folder is deleted afterwards.

- A quick check (``deep=False``, ``--quick``) needs nothing more: it looks at tar sizes, manifests,
  schemas, Zarr metadata and stats. It reads a few KB per shard and episode.
- A deep check downloads each tar just before it is hashed and decoded and frees it right after, and the
  chunks of one episode group (concurrently) just before that group is read, deleting them after. So a
  remote store gets exactly the local checks (sha256 of every tar, per-sample digests, exactly-once
  accounting, every Zarr chunk with its crc32c, stats, errors): it reads every byte of the store once, and
  needs temporary disk (``$TMPDIR``) for the metadata plus one tar and one episode group at a time.
- ``validate --decode`` and ``inspect --episode`` need the chunks of several episodes at once: they copy
  every object (``copy="all"``) or the chunks of the named episodes.
"""

from __future__ import annotations

import contextvars
import logging
import os
import posixpath
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

from motiondata.errors import MotionDataError, StoreError
from motiondata.store import objstore
from motiondata.store.layout import SHARDS_DIR, ZARR_STORE

log = logging.getLogger(__name__)


def _is_tar(rel: str) -> bool:
    return rel.startswith(SHARDS_DIR + "/") and rel.endswith(".tar")


def _is_chunk(rel: str) -> bool:
    return rel.startswith(ZARR_STORE + "/") and posixpath.basename(rel) != "zarr.json"


def _episode_of(rel: str) -> str:
    return rel.split("/", 2)[1] if _is_chunk(rel) and rel.count("/") >= 2 else ""


@dataclass
class RemoteCopy:
    """A local stand-in of the store at ``url``: ``dest`` holds what was fetched; ``objects`` maps every
    object key (relative to the store) to its size."""

    url: str
    fs: Any
    root: str
    dest: Path
    objects: dict[str, int]

    def fetch(self, keys: Sequence[str]) -> None:
        """Download ``keys`` into ``dest`` (concurrently where the filesystem can)."""
        if keys:
            for key in keys:
                (self.dest / key).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get([f"{self.root}/{k}" for k in keys], [str(self.dest / k) for k in keys])

    @contextmanager
    def tar(self, path: Path) -> Iterator[None]:
        """The real bytes of a shard tar at ``path`` while the block runs, then a sparse stand-in again."""
        rel = path.relative_to(self.dest).as_posix() if path.is_relative_to(self.dest) else ""
        if rel not in self.objects:
            yield
            return
        self.fetch([rel])
        try:
            yield
        finally:
            os.truncate(path, 0)
            os.truncate(path, self.objects[rel])

    @contextmanager
    def episode(self, eid: str) -> Iterator[None]:
        """The chunk files of episode group ``eid`` while the block runs; deleted afterwards."""
        keys = [k for k in self.objects if _episode_of(k) == eid]
        self.fetch(keys)
        try:
            yield
        finally:
            for key in keys:
                (self.dest / key).unlink(missing_ok=True)


_LAZY: contextvars.ContextVar[RemoteCopy | None] = contextvars.ContextVar("motiondata_lazy_copy", default=None)


def fetched_tar(path: Path) -> ContextManager[None]:
    """For ``validate``: the real tar at ``path`` during a deep remote check (a no-op for local stores)."""
    copy = _LAZY.get()
    return copy.tar(Path(path)) if copy is not None else nullcontext()


def fetched_episode(eid: str) -> ContextManager[None]:
    """For ``validate``: episode ``eid``'s chunks during a deep remote check (a no-op for local stores)."""
    copy = _LAZY.get()
    return copy.episode(eid) if copy is not None else nullcontext()


def _listing(url: str) -> tuple[Any, str, dict[str, int]]:
    """``(fs, root, {relative key: size})`` of every object under ``url``; one line when there is none."""
    fs, root = objstore.filesystem(url)
    try:
        found = fs.find(root, detail=True)
    except (FileNotFoundError, PermissionError, OSError) as err:
        raise StoreError(f"{url}: cannot list it ({type(err).__name__}: {err}); check the bucket name, the "
                         "prefix and the credentials (AWS_* variables)") from None
    objects = {path[len(root) + 1:]: int(info.get("size") or 0) for path, info in found.items()
               if path.startswith(root + "/") and not path.endswith("/") and info.get("type") != "directory"}
    if not objects:
        raise StoreError(f"{url}: no store there (no objects under this prefix); check the URL, or build one "
                         f"with `motiondata build SPEC --out {url}`")
    return fs, root, objects


def copy_store(url: str, dest: Path, copy: str = "meta", episodes: Sequence[str] = ()) -> RemoteCopy:
    """Copy the store at ``url`` into ``dest``: ``copy="all"`` every object; ``"meta"`` the metadata plus the
    chunks of ``episodes``, with sparse stand-ins of the right size for the tars."""
    fs, root, objects = _listing(url)
    remote = RemoteCopy(url.rstrip("/"), fs, root, dest, objects)
    keys = [k for k in sorted(objects) if copy == "all" or
            not (_is_tar(k) or (_is_chunk(k) and _episode_of(k) not in episodes))]
    for key in sorted(objects):
        if copy != "all" and _is_tar(key):
            (dest / key).parent.mkdir(parents=True, exist_ok=True)
            with open(dest / key, "wb") as fh:
                fh.truncate(objects[key])  # a sparse file: the quick check compares sizes only
    remote.fetch(keys)
    log.info("copied %d of %d objects (%d bytes) of %s to %s", len(keys), len(objects),
             sum(objects[k] for k in keys), url, dest)
    return remote


def _mapper(local: Path, url: str) -> Callable[[Any], Any]:
    """Rewrites the temporary folder's path into the URL in strings, lists and dicts of a report."""
    prefix, target = str(local), url.rstrip("/")

    def mapped(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(prefix, target)
        if isinstance(value, list):
            return [mapped(v) for v in value]
        if isinstance(value, dict):
            return {k: mapped(v) for k, v in value.items()}
        return value

    return mapped


@contextmanager
def _remote_copy(url: str, copy: str, episodes: Sequence[str]) -> Iterator[tuple[RemoteCopy, Callable]]:
    tmp = tempfile.mkdtemp(prefix="motiondata-remote-")
    try:
        local = Path(tmp) / "store"
        remote = copy_store(url, local, copy=copy, episodes=episodes)
        mapped = _mapper(local, url)
        try:
            yield remote, mapped
        except MotionDataError as err:  # a message naming the temporary copy names the URL instead
            raise StoreError(mapped(str(err))) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def readable_store(store: str | Path, copy: str = "meta", episodes: Sequence[str] = ()
                   ) -> Iterator[tuple[str, Callable[[Any], Any]]]:
    """``(local folder, report mapper)`` for ``store``: a local store as it is (the mapper changes nothing),
    a remote one copied to a temporary folder (:func:`copy_store`) that is deleted on exit; the mapper turns
    that folder's path back into the URL in problems and summaries."""
    if not objstore.is_remote(store):
        yield str(objstore.local_path(store)), (lambda value: value)
        return
    with _remote_copy(str(store).rstrip("/"), copy, episodes) as (remote, mapped):
        yield str(remote.dest), mapped


def validate_remote_report(url: str, deep: bool = True) -> dict[str, Any]:
    """:func:`motiondata.store.validate.validate_store_report` of a store on object storage: the metadata
    copied, tars and episode chunks fetched one at a time while the deep checks need them."""
    from motiondata.store.validate import validate_store_report

    with _remote_copy(url.rstrip("/"), "meta", ()) as (remote, mapped):
        token = _LAZY.set(remote if deep else None)
        try:
            return mapped(validate_store_report(remote.dest, deep=deep))
        finally:
            _LAZY.reset(token)
