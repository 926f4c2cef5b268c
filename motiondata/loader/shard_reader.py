"""Read a store's shards for the streaming loader: resolve shard lists (manifest, glob, URLs via fsspec),
stream tar members, decode only requested fields, and report corrupt data with shard and key.

Nothing in a shard is trusted: shards are plain tars (a gzip/bzip2/xz/zstd file is refused, never
decompressed); member names that are absolute, climb out with ``..`` or hold a ``/`` in the key are
refused; a member may not declare more bytes than the file holds; ``.npy`` headers are parsed and checked
against their data before anything is allocated (:mod:`motiondata.store.npy_member`). Each of these is
corrupt data under the loader's ``on_corrupt`` policy. Shard paths read from a store's ``manifest.json``
must lie inside the store; tars elsewhere are read only when passed explicitly (a list, glob or URL).
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import fsspec

from motiondata.errors import StoreError
from motiondata.store import layout
from motiondata.store.npy_member import compressed_kind, member_name_problem
from motiondata.store.objstore import storage_options  # s3: no stale listing cache
from motiondata.store.npy_member import decode_member as decode_member  # noqa: F401  (public here too)
from motiondata.store.sample_codec import split_member

log = logging.getLogger(__name__)
POLICIES = ("skip", "raise")
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
_WARNED: set[tuple] = set()


@dataclass(frozen=True)
class ShardInfo:
    url: str
    name: str
    num_samples: int  # samples the shard holds
    indices: tuple[int, ...] | None = None  # the samples a selection keeps (e.g. an episode split); None = all

    @property
    def count(self) -> int:
        """Samples the loader plans with: the selected ones, else all."""
        return self.num_samples if self.indices is None else len(self.indices)

    def real(self, position: int) -> int:
        """Index in the shard of the ``position``-th planned sample."""
        return position if self.indices is None else self.indices[position]


# ----------------------------------------------------------------------------- shard list

def _local_path(url: str) -> str | None:
    protocol, path = fsspec.core.split_protocol(url)
    return path if protocol in (None, "file", "local") else None


def _join(root: str, name: str) -> str:
    if fsspec.core.split_protocol(name)[0] or name.startswith("/"):
        return name
    return root.rstrip("/") + "/" + name


def _read_json(url: str) -> dict | None:
    try:
        with fsspec.open(url, "rt", **storage_options(url)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError) as err:
        raise StoreError(f"{url} is not valid JSON ({type(err).__name__}); Fix: rebuild the store "
                         "(`motiondata build` rewrites its manifests)") from None
    return doc if isinstance(doc, dict) else None


def _shard_info(url: str, name: Any, count: Any) -> ShardInfo:
    """A shard with its manifest's sample count: an int >= 0, and for a local file at most one sample per
    512-byte tar header it holds (a lying count is clamped with a warning, so it cannot size the epoch
    plan; reading then reports the missing samples as corrupt data)."""
    if type(count) is not int or count < 0:
        raise StoreError(f"manifest gives {url} the sample count {str(count)[:40]!r}, not an int >= 0; Fix: rebuild "
                         "the shard and its manifests", shard=str(name))
    path = _local_path(url)
    limit = os.path.getsize(path) // tarfile.BLOCKSIZE if path is not None and os.path.isfile(path) else None
    if limit is not None and count > limit:
        log.warning("%s", StoreError(f"manifest says {url} holds {count} samples, but the file has room for at most "
                                     f"{limit}; planning with {limit}. Fix: rebuild the shard", shard=str(name)))
        count = limit
    return ShardInfo(url, str(name), count)


def _count_samples(url: str) -> int:
    log.info("%s has no shard manifest; counting its samples from the tar headers", url)
    keys: set[str] = set()
    name = url.rstrip("/").rsplit("/", 1)[-1]
    try:
        with _open_tar(url) as tf:
            for member in tf:
                keys.add(split_member(member.name.removeprefix("./"))[0])
    except (tarfile.TarError, OSError, EOFError) as err:
        raise StoreError(f"cannot count the samples of {url} ({type(err).__name__}: {err}); Fix: give the shard "
                         "its .json manifest, or rebuild it", shard=name) from err
    return len(keys)


def _shard_from_url(url: str) -> ShardInfo:
    name = url.rstrip("/").rsplit("/", 1)[-1].split(".tar")[0]
    sidecar = _read_json(url[: -len(".tar")] + ".json") if url.endswith(".tar") else None
    count = sidecar["num_samples"] if sidecar and "num_samples" in sidecar else _count_samples(url)
    return _shard_info(url, name, count)


def _inside(root: str, tar: Any, shard: Any) -> str:
    """``root/tar`` when ``tar`` (from the store's manifest.json) is a relative path inside the store."""
    ok = isinstance(tar, str) and tar and not fsspec.core.split_protocol(tar)[0] and "\\" not in tar
    ok = ok and not tar.startswith(("/", "~")) and ".." not in tar.split("/")
    if ok and _local_path(root) is not None:
        base = os.path.realpath(_local_path(root))
        ok = os.path.commonpath([base, os.path.realpath(os.path.join(base, tar))]) == base
    if not ok:
        raise StoreError(f"manifest.json lists tar {str(tar)[:120]!r} outside the store {root}; Fix: point it at "
                         f"{layout.SHARDS_DIR}/{shard}.tar, or pass the shard tars explicitly as a list of URLs",
                         shard=str(shard))
    return _join(root, posixpath.normpath(tar))


def _shards_from_manifest(root: str, manifest: dict) -> list[ShardInfo]:
    try:
        return [_shard_info(_inside(root, e["tar"], e["shard"]), e["shard"], e["num_samples"])
                for e in manifest["shards"]]
    except (KeyError, TypeError) as err:
        raise StoreError(f"{root}/{layout.JOB_MANIFEST} has a malformed shard entry ({type(err).__name__}: {err}); "
                         "Fix: rebuild the store, or pass the shard tars explicitly") from None


def _index_shards(root: str, index: dict) -> list[dict]:
    """The shard entries of a large store's ``shards/index.jsonl`` (count and sha256 checked)."""
    from motiondata.store.manifest import index_entries

    url = _join(root, layout.SHARD_INDEX)
    try:
        with fsspec.open(url, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise StoreError(f"{url} is missing (manifest.json lists its shards there); Fix: rebuild the store "
                         "with `motiondata build` and the same --out") from None
    return index_entries(index, data, url)


def resolve_shards(source: str | os.PathLike | Sequence[str]) -> list[ShardInfo]:
    """Shards of a store directory/URL (via its manifest), a glob of tar URLs, or a list of tar URLs."""
    if isinstance(source, (list, tuple)):
        return [_shard_from_url(str(u)) for u in source]
    text = str(source)
    if any(c in text for c in "*?["):
        fs, _, paths = fsspec.core.get_fs_token_paths(text)
        urls = [p if _local_path(text) is not None else fs.unstrip_protocol(p) for p in sorted(paths)]
        if not urls:
            raise StoreError(f"no shard matches {text!r}; Fix: check the glob (e.g. 'OUT/shards/shard-*.tar')")
        return [_shard_from_url(u) for u in urls]
    if text.endswith(".tar"):
        return [_shard_from_url(text)]
    manifest = _read_json(_join(text, layout.JOB_MANIFEST))
    if manifest and "shards" not in manifest and isinstance(manifest.get("shard_index"), dict):
        manifest["shards"] = _index_shards(text, manifest["shard_index"])
    if manifest and manifest.get("shards"):
        return _shards_from_manifest(text, manifest)
    if _local_path(text) is not None and os.path.isdir(os.path.join(text, layout.SHARDS_DIR)):
        log.warning("%s has no %s yet (job unfinished?): streaming the shards present", text, layout.JOB_MANIFEST)
        return resolve_shards(_join(text, f"{layout.SHARDS_DIR}/shard-*.tar"))
    raise StoreError(f"{text!r} has no {layout.JOB_MANIFEST} listing shards; Fix: build the store with "
                     "`motiondata build`, or pass a glob / list of shard tar URLs")


# ----------------------------------------------------------------------------- reading one shard

class NotPlainTar(tarfile.ReadError):
    """A shard file that is compressed: shards are plain tars and are never decompressed."""


class _Prefixed:
    """A read-only stream that first returns ``head`` (the bytes peeked at), then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: Any):
        self.head, self.raw = head, raw

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(size)
        take = self.head if size < 0 else self.head[:size]
        self.head = self.head[len(take):]
        rest = self.raw.read(-1 if size < 0 else size - len(take)) if size < 0 or len(take) < size else b""
        return take + rest


def _refuse_compressed(head: bytes, url: str) -> None:
    kind = compressed_kind(head)
    if kind is not None:
        raise NotPlainTar(f"{url} is {kind}-compressed, not a plain tar; motiondata never decompresses shards "
                          "(decompress it to a plain .tar, or rebuild it)")


@contextmanager
def _open_tar(url: str) -> Iterator[tarfile.TarFile]:
    """A plain tar (``r:`` / ``r|``: never decompressed); compressed files raise :class:`NotPlainTar`."""
    path = _local_path(url)
    if path is not None:  # seekable: members we do not want are skipped without reading them
        with open(path, "rb") as f:
            _refuse_compressed(f.read(8), url)
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r:") as tf:
                yield tf
    else:  # any fsspec URL, read once front to back
        with fsspec.open(url, "rb", **storage_options(url)) as f:
            head = f.read(8)
            _refuse_compressed(head, url)
            with tarfile.open(fileobj=_Prefixed(head, f), mode="r|") as tf:
                yield tf


def _member_bytes(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A member's payload; a size declared past the end of a local file is refused before reading."""
    size = os.fstat(tf.fileobj.fileno()).st_size if isinstance(tf.fileobj, io.BufferedReader) else None
    if size is not None and member.offset_data + member.size > size:
        raise tarfile.ReadError(f"member {member.name[:80]!r} declares {member.size} bytes past the end of the file")
    fobj = tf.extractfile(member)
    if fobj is None:
        raise tarfile.ReadError(f"member {member.name[:80]!r} has no data")
    return fobj.read()


def _corrupt(policy: str, shard: ShardInfo, key: str | None, problem: str) -> None:
    fix = "rebuild this shard (delete it and its .json, then rerun `motiondata build`)"
    if policy == "raise":
        raise StoreError(f"{problem}. Fix: {fix}, or load with on_corrupt='skip'", shard=shard.name, key=key)
    seen = (shard.url, key, problem)  # warn once per process; later epochs repeat it at debug level
    level = logging.DEBUG if seen in _WARNED else logging.WARNING
    _WARNED.add(seen)
    log.log(level, "skipping corrupt data: %s", StoreError(f"{problem}. Fix: {fix}", shard=shard.name, key=key))


def _ended_cleanly(tf: tarfile.TarFile, shard: ShardInfo, index: int) -> bool:
    """tarfile stops silently at a bad header or a cut file: a complete shard has every sample its
    manifest counts and (when seekable) ends in the two zero blocks of a tar."""
    if index + 1 < shard.num_samples:
        return False
    if _local_path(shard.url) is None:
        return True  # streamed once: the sample count is the check
    tf.fileobj.seek(tf.offset)
    tail = tf.fileobj.read(END_OF_ARCHIVE)
    return len(tail) == END_OF_ARCHIVE and not tail.strip(b"\0")


def _member_parts(name: str) -> tuple[str, str, str, bool]:
    """``(key, field, ext, refused)``; a refused name (``../k.f.npy``, ``/abs/k.f.npy``, ``dir/k.f.npy``) is
    grouped by its base name, so an injected or renamed member spoils its own sample, not the count."""
    refused = member_name_problem(name) is not None
    key, fld, ext = split_member(name.removeprefix("./"))
    if refused and (not key or "/" in key or "\\" in key):
        key = split_member(posixpath.basename(name.replace("\\", "/")))[0]
    return key, fld, ext, refused


def _member_value(tf: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> Any:
    problem = member_name_problem(member.name)
    if problem is not None:
        raise StoreError(f"{problem}: refused")
    return decode_member(ext, _member_bytes(tf, member))


def read_shard(shard: ShardInfo, wanted: dict[int, Any], fields: set[str] | None = None,
               on_corrupt: str = "skip") -> Iterator[tuple[Any, dict | None]]:
    """Yield ``(tag, sample)`` for the samples whose index in the shard is in ``wanted`` (index -> tag),
    decoding only ``fields``. A corrupt sample (and, on a cut or damaged tar, the sample being read and
    all after it) yields ``(tag, None)`` under ``on_corrupt="skip"`` and raises under ``"raise"``; so does
    a refused one (bad member name, lying header) and every sample of a compressed shard."""
    if not wanted:
        return
    last, index, key, sample, done, clean = max(wanted), -1, None, None, set(), False
    try:
        with _open_tar(shard.url) as tf:
            for member in tf:
                if not member.isfile():
                    continue
                k, fld, ext, bad_name = _member_parts(member.name)
                if k != key:
                    if index in wanted:
                        done.add(index)
                        yield wanted[index], sample
                    index, key = index + 1, k
                    if index > last:
                        return
                    sample = {"__key__": k} if index in wanted else None
                if sample is None or (fields is not None and fld not in fields and not bad_name):
                    continue
                try:
                    sample[fld] = _member_value(tf, member, ext)
                except (ValueError, OSError, EOFError, StoreError, tarfile.TarError, MemoryError) as exc:
                    _corrupt(on_corrupt, shard, k, f"field {fld[:80]!r} cannot be decoded ({exc})")
                    sample = None
            clean = _ended_cleanly(tf, shard, index)
        if not clean:
            _corrupt(on_corrupt, shard, key, f"the tar stops inside sample {index + 1} of {shard.num_samples} "
                     "(truncated file or damaged tar header)")
    except NotPlainTar as exc:
        _corrupt(on_corrupt, shard, None, str(exc))
    except (tarfile.TarError, OSError, EOFError) as exc:
        _corrupt(on_corrupt, shard, key, f"tar unreadable in sample {index + 1} ({type(exc).__name__}: {exc})")
    if clean and index in wanted and index not in done:
        done.add(index)
        yield wanted[index], sample
    for i in sorted(set(wanted) - done):
        yield wanted[i], None


def available_fields(source: Any) -> list[str]:
    """Field names of a store's first sample, from its tar member names (nothing is decoded)."""
    shard = next((s for s in resolve_shards(source) if s.num_samples > 0), None)
    if shard is None:
        raise StoreError(f"{source!r} holds no samples; Fix: check the build's errors.jsonl")
    names: set[str] = set()
    first = None
    try:
        with _open_tar(shard.url) as tf:
            for member in tf:
                key, fld, _ = split_member(member.name.removeprefix("./"))
                if first is not None and key != first:
                    break
                first = key
                names.add(fld)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise StoreError(f"cannot list fields ({type(err).__name__}: {err}); Fix: rebuild this shard",
                         shard=shard.name) from err
    return sorted(names)
