"""Member offset index of a local shard: where every member's bytes lie, so samples are read by offset.

wids-style: the shard manifest written by ``write_shard`` holds ``members`` (per sample, in tar order,
``[[field.ext, data offset, size], ...]``); a shard without it is scanned once per process, reading only
the 512-byte tar headers (and skipping the data). The index is trusted only as far as it is checked:

- every member name must pass :func:`member_name_problem` (no absolute paths, ``..`` or ``/`` in keys);
- offsets are 512-aligned, increasing, non-overlapping, and ``offset + size`` lies inside the file;
- the scanner accepts only ustar/PAX regular-file headers with a valid checksum and a clean end of archive.

Anything else (a compressed file, a damaged or crafted header, a manifest index that disagrees with the
file) makes :func:`shard_index` return None, and the loader reads that shard with the strict sequential
tar reader (:func:`motiondata.loader.shard_reader.read_shard`), which names the problem, shard and key.
``.npy`` headers are still parsed and checked against the member size before any data is read
(:mod:`motiondata.loader.batch_reader`).
"""

from __future__ import annotations

import logging
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any

from motiondata.loader.shard_reader import ShardInfo, _local_path, _read_json
from motiondata.store.npy_member import compressed_kind, member_name_problem
from motiondata.store.sample_codec import split_member

log = logging.getLogger(__name__)
BLOCK = tarfile.BLOCKSIZE
_CACHE: dict[tuple[str, int, int], "ShardIndex | None"] = {}


@dataclass
class ShardIndex:
    """``samples[i]`` = (key, {field: (ext, data offset, size)}) of the i-th sample in tar order."""

    path: str
    size: int
    samples: list[tuple[str, dict[str, tuple[str, int, int]]]]
    headers: dict[tuple[int, str], Any] = field(default_factory=dict)  # parsed .npy headers, filled on read


def _octal(raw: bytes) -> int | None:
    text = raw.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None  # base-256 sizes (> 8 GiB) or garbage: not for the fast path


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[148:156])
    return stored is not None and stored == sum(header[:148]) + 256 + sum(header[156:])


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a PAX extended header (records: ``"<len> key=value\\n"``)."""
    pos, path = 0, None
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            return None
        length = int(data[pos:space] or b"0")
        if length <= 0:
            return None
        key, _, value = data[space + 1: pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8")
        pos += length
    return path


def scan_members(path: str) -> list[tuple[str, int, int]] | None:
    """``(name, data offset, size)`` of every regular member, from the headers alone; None when the file
    is not a clean plain ustar/PAX tar (the strict reader then reports what is wrong)."""
    members, pending, size = [], None, os.path.getsize(path)
    with open(path, "rb") as f:
        if compressed_kind(f.read(8)) is not None:
            return None
        offset = 0
        while True:
            header = os.pread(f.fileno(), BLOCK, offset)
            if len(header) < BLOCK:
                return None  # no end-of-archive marker: truncated
            if not header.strip(b"\0"):
                return members if len(os.pread(f.fileno(), BLOCK, offset + BLOCK).strip(b"\0")) == 0 else None
            length = _octal(header[124:136])
            if not _checksum_ok(header) or length is None or offset + BLOCK + length > size:
                return None
            kind, data = header[156:157], offset + BLOCK
            if kind == b"x":
                pending = _pax_path(os.pread(f.fileno(), length, data))
                if pending is None:
                    return None
            elif kind in (b"0", b"\0"):
                name = pending or _ustar_name(header)
                members.append((name, data, length))
                pending = None
            elif kind != b"g":
                return None  # links, directories, GNU long names...: the strict reader decides
            offset = data + -(-length // BLOCK) * BLOCK


def _ustar_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


def _name_ok(key: str, suffix: str, checked: dict[str, bool]) -> bool:
    """``key.suffix`` passes :func:`member_name_problem` (checked once per key and once per suffix: a name
    is refused for what its key or its suffix holds)."""
    for part, name in ((key, f"{key}.f.npy"), ("." + suffix, f"k.{suffix}")):
        if part not in checked:
            checked[part] = member_name_problem(name) is None and "/" not in part and ".." not in part
        if not checked[part]:
            return False
    return True


def _group(members: list[tuple[str, int, int]], file_size: int) -> list[tuple[str, dict]] | None:
    """Members -> samples; None on a refused name, a broken layout or offsets outside the file."""
    samples: list[tuple[str, dict]] = []
    seen: set[str] = set()
    checked: dict[str, bool] = {}
    end = 0
    for name, offset, length in members:
        key, fld, ext = split_member(name.removeprefix("./"))
        if not key or not fld or not ext or offset % BLOCK or offset < end or offset + length > file_size:
            return None
        if not _name_ok(key, f"{fld}.{ext}", checked) or (name.startswith("./") and member_name_problem(name)):
            return None
        if not samples or samples[-1][0] != key:
            if key in seen:
                return None  # members of one sample not adjacent
            seen.add(key)
            samples.append((key, {}))
        samples[-1][1][fld] = (ext, offset, length)
        end = offset + length
    return samples


def _from_manifest(shard: ShardInfo, file_size: int) -> list[tuple[str, dict]] | None:
    doc = _read_json(shard.url[: -len(".tar")] + ".json") if shard.url.endswith(".tar") else None
    entries, keys = (doc or {}).get("members"), (doc or {}).get("keys")
    if not isinstance(entries, list) or not isinstance(keys, list) or len(entries) != len(keys):
        return None
    if doc.get("bytes") != file_size:  # the tar was rewritten since: its headers are the truth
        return None
    members = []
    try:
        for key, rows in zip(keys, entries):
            members += [(f"{key}.{suffix}", int(offset), int(length)) for suffix, offset, length in rows]
    except (TypeError, ValueError):
        return None
    return _group(members, file_size)


def warm(shards: list[ShardInfo]) -> None:
    """Build the indices of ``shards`` now (before DataLoader workers fork, so they inherit them)."""
    for shard in shards:
        shard_index(shard)


def shard_index(shard: ShardInfo) -> ShardIndex | None:
    """The member index of a local shard (manifest ``members``, else a header scan), cached per process
    and file version; None for remote shards and for anything the fast path should not trust."""
    path = _local_path(shard.url)
    if path is None or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    cache_key = (path, stat.st_size, stat.st_mtime_ns)
    if cache_key not in _CACHE:
        samples = _from_manifest(shard, stat.st_size)
        if samples is None:
            scanned = scan_members(path)
            samples = _group(scanned, stat.st_size) if scanned is not None else None
        if samples is None:
            log.debug("%s: no usable member index; reading it sequentially", shard.url)
        _CACHE[cache_key] = ShardIndex(path, stat.st_size, samples) if samples is not None else None
    return _CACHE[cache_key]
