"""``--out s3://bucket/prefix``: build into a local staging folder, upload whole objects, manifest last.

The build code is Path based and stays so: a remote store is built into ``objstore.staging_dir(URL)`` (the
same path on every node; ``MOTIONDATA_STAGING`` moves it), whose ``.motiondata-remote`` file names the URL.
Whoever writes a shard manifest uploads the shard (:func:`push_shard`): its tar, partial stats and episode
groups as one whole PUT each, then the manifest last, so on the object store too the manifest is the
done-marker. The staged tar and groups are deleted after the upload; the small JSON files stay.

The driver mirrors the remote's small files into staging (:func:`Remote.pull`, at job start and again
before finalize, since other nodes write shards) and computes the done set from one listing of
``shards/``: a shard is done when its manifest exists and its tar object has the manifest's byte size.
The runner asks :meth:`Remote.is_done` instead of ``manifest.shard_done`` (which checks a local tar), so no
tar is ever downloaded to resume. Deleting a shard (``resume.unmark_shard``, ``isolation.discard``,
``resume.remove_episode_groups``) deletes its remote objects too, the manifest first.

Two drivers must never build one remote prefix at once: the lock (``store/lock.py``) is taken on the
staging folder, which only guards one machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motiondata.errors import StoreError
from motiondata.store import layout, objstore

log = logging.getLogger(__name__)

MARKER = ".motiondata-remote"  # in a staging folder: the URL of the remote store it stages
JOB_FILES = tuple(f for f in (layout.JOB_MANIFEST, layout.STATS, layout.ERRORS, layout.REPORT,
                              f"{layout.ZARR_STORE}/zarr.json", getattr(layout, "SHARD_INDEX", None)) if f)


def remote_of(out: str | Path) -> str | None:
    """The URL a staging folder stages (``None`` for a plain local store)."""
    marker = Path(out) / MARKER
    try:
        return marker.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def resolve(out: str | Path) -> tuple[Path, str | None]:
    """``(the folder to build into, the remote URL or None)``: a URL gets its staging folder (created, with
    its marker), so a shard task on any node finds where to stage by the URL alone."""
    if not objstore.is_remote(out):
        return objstore.local_path(out), None
    url = os.fspath(out).rstrip("/")
    staging = objstore.staging_dir(url)
    staging.mkdir(parents=True, exist_ok=True)
    if remote_of(staging) != url:
        layout.atomic_write_text(staging / MARKER, url + "\n")
    return staging, url


def local_of(out: str | Path) -> Path:
    """The folder a driver-side helper reads for ``out`` (a URL's staging folder, else the path)."""
    return objstore.staging_dir(os.fspath(out).rstrip("/")) if objstore.is_remote(out) else Path(out)


def _key(root: str, rel: str) -> str:
    return f"{root}/{rel}"


def _rel(path: Path, staging: Path) -> str:
    return path.relative_to(staging).as_posix()


def _group_files(staging: Path, episode: str) -> list[Path]:
    folder = layout.zarr_episode(staging, episode)
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _listing(fs: Any, prefix: str) -> dict[str, dict[str, Any]]:
    """key -> info (``size``, ``ETag`` on S3) of every object under ``prefix`` (one listing; empty when none)."""
    try:
        found = fs.find(prefix, detail=True)
    except FileNotFoundError:
        return {}
    return {k: v for k, v in found.items() if v.get("type", "file") == "file"}


def _same(path: Path, info: dict[str, Any]) -> bool:
    """The staged file already holds the object (its md5 is the object's single-PUT ETag)."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    return bool(etag) and path.is_file() and path.stat().st_size == int(info.get("size") or -1) and _md5(path) == etag


def _remove(fs: Any, keys: list[str]) -> None:
    if not keys:
        return
    try:
        fs.rm(keys)
    except FileNotFoundError:  # already gone: what we wanted
        pass


def _replace_group(fs: Any, root: str, staging: Path, episode: str, files: list[Path]) -> None:
    """Remote objects of the episode group that the new group does not have (stale chunk keys) go first."""
    wanted = {_key(root, _rel(p, staging)) for p in files}
    held = _listing(fs, _key(root, f"{layout.ZARR_STORE}/{episode}/"))
    _remove(fs, sorted(set(held) - wanted))


def push_shard(url: str, staging: Path, index: int, manifest: dict[str, Any]) -> None:
    """Upload shard ``index`` (tar, partial stats, its episodes' groups), then its manifest last; then drop
    the staged tar and groups (the small JSON files stay: they are the driver's view of the store)."""
    fs, root = objstore.filesystem(url)
    files = [p for p in (staging / rel for rel in shard_rels(index, manifest_too=False)) if p.is_file()]
    for episode in manifest.get("episodes", []):
        group = _group_files(staging, episode)
        _replace_group(fs, root, staging, episode, group)
        files += group
    if files:
        fs.put([str(p) for p in files], [_key(root, _rel(p, staging)) for p in files])
    fs.put_file(str(layout.shard_manifest(staging, index)), _key(root, _rel(layout.shard_manifest(staging, index),
                                                                           staging)))
    layout.shard_tar(staging, index).unlink(missing_ok=True)
    for episode in manifest.get("episodes", []):
        shutil.rmtree(layout.zarr_episode(staging, episode), ignore_errors=True)
    log.debug("uploaded %s to %s", layout.shard_name(index), url)


def delete_objects(out: str | Path, rels: list[str]) -> None:
    """Delete these store paths from the remote a staging folder stages (no-op for a local store)."""
    url = remote_of(out)
    if url:
        fs, root = objstore.filesystem(url)
        _remove(fs, [_key(root, rel) for rel in rels])


def delete_groups(out: str | Path, episodes: list[str] | set[str]) -> None:
    """Delete the remote episode groups (every object under ``episodes.zarr/<episode>/``)."""
    url = remote_of(out)
    if not url or not episodes:
        return
    fs, root = objstore.filesystem(url)
    for episode in sorted(episodes):
        _remove(fs, sorted(_listing(fs, _key(root, f"{layout.ZARR_STORE}/{episode}/"))))


def shard_rels(index: int, manifest_too: bool = True) -> list[str]:
    """Store paths of shard ``index``: [manifest,] tar, partial stats (each format stores have had)."""
    names = [layout.shard_tar("", index), layout.shard_stats("", index)]
    if hasattr(layout, "shard_stats_json"):
        names.append(layout.shard_stats_json("", index))
    return [p.as_posix() for p in ([layout.shard_manifest("", index)] if manifest_too else []) + names]


def take_remote_manifest(out: str | Path, index: int) -> None:
    """Before a shard is rebuilt: stage its remote manifest (so the rebuild knows the previous episodes),
    then delete it remotely (the shard is not done from now on, wherever the rebuild runs)."""
    url = remote_of(out)
    if not url:
        return
    fs, root = objstore.filesystem(url)
    path = layout.shard_manifest(out, index)
    key = _key(root, _rel(path, Path(out)))
    try:
        data = fs.cat_file(key)
    except FileNotFoundError:
        return
    layout.atomic_write_bytes(path, data)
    _remove(fs, [key])


def fetch_groups(out: str | Path, episodes: list[str]) -> None:
    """Download episode groups into staging (an incremental rebuild reads the stored tables)."""
    url = remote_of(out)
    if not url:
        return
    fs, root = objstore.filesystem(url)
    for episode in episodes:
        keys = sorted(_listing(fs, _key(root, f"{layout.ZARR_STORE}/{episode}/")))
        if not keys:
            raise StoreError(f"episode group {episode} is missing from {url}; the shard is rebuilt from its inputs")
        local = [str(Path(out) / k[len(root) + 1:]) for k in keys]
        shutil.rmtree(layout.zarr_episode(out, episode), ignore_errors=True)
        fs.get(keys, local)


def remote_sha256(url: str, index: int) -> str | None:
    """sha256 of the remote tar of shard ``index`` (streamed; ``None`` when it is missing)."""
    fs, root = objstore.filesystem(url)
    digest = hashlib.sha256()
    try:
        with fs.open(_key(root, layout.shard_tar("", index).as_posix()), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _md5(path: Path) -> str | None:
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None


@dataclass
class Remote:
    """The driver's handle on a remote store: its staging folder, done set and the small files pulled."""

    url: str
    staging: Path
    done: set[int] = field(default_factory=set)
    pulled: dict[str, str | None] = field(default_factory=dict)  # rel path -> md5 of the remote copy

    def is_done(self, index: int) -> bool:
        return index in self.done

    def done_manifests(self, indices: list[int]) -> dict[int, dict[str, Any]]:
        """The staged manifests of the shards the last pull found done."""
        from motiondata.store.manifest import read_shard_manifest

        return {i: m for i in indices if i in self.done and (m := read_shard_manifest(self.staging, i))}

    def intact(self, index: int, manifest: dict[str, Any]) -> bool:
        return remote_sha256(self.url, index) == manifest.get("sha256")

    def pull(self, job_files: bool = True) -> None:
        """Mirror the remote's small files into staging and recompute the done set; ``job_files=False``
        (before finalize, which rewrites them) mirrors only ``shards/``."""
        fs, root = objstore.filesystem(self.url)
        listing = _listing(fs, _key(root, f"{layout.SHARDS_DIR}/"))
        names = {k[len(root) + 1:]: info for k, info in listing.items()}
        small = sorted(n for n in names if _small(n))
        self._mirror(fs, root, [n for n in small if not _same(self.staging / n, names[n])], small)
        if job_files:
            self._pull_job_files(fs, root)
        self.done = set()
        for rel in small:
            index = _manifest_index(rel)
            if index is not None and _tar_matches(self.staging, index, names):
                self.done.add(index)
        log.info("%s: %d shards done", self.url, len(self.done))

    def _mirror(self, fs: Any, root: str, fetch: list[str], held: list[str]) -> None:
        """Download ``fetch``; remove the staged small files of ``shards/`` the remote does not hold."""
        if fetch:
            fs.get([_key(root, r) for r in fetch], [str(self.staging / r) for r in fetch])
        wanted = set(held)
        staged = self.staging / layout.SHARDS_DIR
        for path in (staged.iterdir() if staged.is_dir() else []):
            if path.is_file() and _small(_rel(path, self.staging)) and _rel(path, self.staging) not in wanted:
                path.unlink()

    def _pull_job_files(self, fs: Any, root: str) -> None:
        for rel in JOB_FILES:
            path = self.staging / rel
            try:
                data = fs.cat_file(_key(root, rel))
            except FileNotFoundError:
                path.unlink(missing_ok=True)
                self.pulled[rel] = None
                continue
            if not path.is_file() or path.read_bytes() != data:
                layout.atomic_write_bytes(path, data)
            self.pulled[rel] = hashlib.md5(data).hexdigest()

    def publish(self) -> str:
        """After finalize: write report.md naming the URL, upload the job files that changed; the URL."""
        from motiondata.inspect.report import REPORT_SHARDS, render_report
        from motiondata.inspect.summary import summarize

        text = render_report({**summarize(self.staging, max_shards=REPORT_SHARDS), "store": self.url})
        path = layout.report_file(self.staging)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            layout.atomic_write_text(path, text)
        self.push_job_files()
        return self.url

    def push_job_files(self) -> None:
        """Upload the job files whose content differs from the remote's (a rerun over a finished store
        writes nothing)."""
        fs, root = objstore.filesystem(self.url)
        for rel in JOB_FILES:
            digest = _md5(self.staging / rel)
            if digest is not None and digest != self.pulled.get(rel):
                fs.put_file(str(self.staging / rel), _key(root, rel))
                self.pulled[rel] = digest


def _small(rel: str) -> bool:
    """A file of ``shards/`` the driver mirrors: manifests and partial stats (not tars, temporaries or the
    job files, which are pulled on their own)."""
    return not rel.endswith(".tar") and not Path(rel).name.startswith(".") and rel not in JOB_FILES


def _manifest_index(rel: str) -> int | None:
    from motiondata.pipeline.resume import MANIFEST_NAME

    match = MANIFEST_NAME.match(Path(rel).name)
    return int(match.group(1)) if match else None


def _tar_matches(staging: Path, index: int, sizes: dict[str, dict[str, Any]]) -> bool:
    """The staged manifest parses and the remote tar has its byte size."""
    try:
        manifest = json.loads(layout.shard_manifest(staging, index).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s: unreadable manifest on the remote; the shard will be rebuilt", layout.shard_name(index))
        return False
    tar = layout.shard_tar("", index).as_posix()
    return isinstance(manifest, dict) and tar in sizes and int(sizes[tar].get("size") or -1) == manifest.get("bytes")


def open_out(out: str | Path) -> tuple[Path, Remote | None]:
    """The folder a job builds into and, for a remote ``--out URL``, its handle: the URL's staging folder
    with the remote's manifests, partial stats and job files pulled."""
    staging, url = resolve(out)
    if url is None:
        staging = staging.resolve()
        staging.mkdir(parents=True, exist_ok=True)
        return staging, None
    remote = Remote(url, staging)
    remote.pull()
    return staging, remote


def _reach(fs: Any, url: str, bucket: str, label: str = "--out ") -> None:
    from motiondata.usage import UsageError

    try:
        fs.info(bucket)
    except FileNotFoundError as exc:
        raise UsageError(f"{label}{url}: bucket {bucket} does not exist; create it or fix the URL") from exc
    except PermissionError as exc:
        raise UsageError(f"{label}{url}: access denied ({exc}); check the credentials (AWS_ACCESS_KEY_ID/"
                         "AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the endpoint (AWS_ENDPOINT_URL)") from exc
    except Exception as exc:  # no credentials, endpoint down: botocore raises more than OSError
        raise UsageError(f"{label}{url}: cannot reach the object store ({type(exc).__name__}: {exc}); check the "
                         "endpoint (AWS_ENDPOINT_URL) and the credentials") from exc


def check_store_url(url: str) -> None:
    """Preflight for a store URL to read (``validate``, ``inspect``): package installed, bucket reachable."""
    fs, root = objstore.filesystem(url)
    _reach(fs, url, root.split("/", 1)[0], label="")


def check_out(url: str) -> None:
    """Preflight for ``--out URL``: the filesystem package is installed, the bucket exists, credentials
    work, and the prefix is empty or a motiondata store (one line each)."""
    from motiondata.usage import UsageError

    fs, root = objstore.filesystem(url)
    bucket = root.split("/", 1)[0]
    _reach(fs, url, bucket)
    try:
        held = fs.ls(root)
    except FileNotFoundError:
        held = []
    ours = {layout.SHARDS_DIR, layout.ZARR_STORE, *JOB_FILES}
    foreign = sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in held)
    foreign = [n for n in foreign if n not in ours]
    if foreign:
        raise UsageError(f"--out {url} is not empty and not a motiondata store (holds {', '.join(foreign[:3])}); "
                         "pass a new prefix, or the prefix of an earlier build to resume it")
