"""TFRecord framing, read without TensorFlow, with both CRCs checked.

A TFRecord file is a sequence of records, each::

    uint64 length (little endian) | uint32 masked_crc32c(length) | bytes data[length] | uint32 masked_crc32c(data)

Files may be gzip-compressed as a whole (TFDS ``compression_type="GZIP"``); that is detected from the
magic bytes, not the name. Paths may be fsspec URLs (``gs://``, ``s3://``, ``memory://``).

:func:`scan_records` walks the length headers only (checking the length CRC) to list where each record
starts, so planning never parses a record; :func:`read_record` reads one record and checks the data CRC.
A bad CRC or a truncated file raises :class:`RecordError` naming the record and the byte offset.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import crc32c
import fsspec

GZIP_MAGIC = b"\x1f\x8b"
MASK_DELTA = 0xA282EAD8
HEADER = 12  # 8-byte length + 4-byte length CRC
MAX_RECORD = 1 << 34  # 16 GiB: a larger declared length is a corrupt header, never an allocation


class RecordError(ValueError):
    """A TFRecord is corrupt or truncated; ``index`` and ``offset`` say which one."""

    def __init__(self, index: int, offset: int, problem: str):
        self.index, self.offset, self.problem = index, offset, problem
        super().__init__(f"record {index} at byte {offset}: {problem}")


def masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record framed as TFRecord (used by writers and tests)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def is_gzip(path: str) -> bool:
    with fsspec.open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


@contextmanager
def open_records(path: str) -> Iterator[IO[bytes]]:
    """A binary stream of the file's (decompressed) record bytes."""
    compressed = is_gzip(path)
    with fsspec.open(path, "rb") as raw:
        if compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        else:
            yield raw


def _header(stream: IO[bytes], index: int, offset: int) -> int | None:
    """The record length at ``offset`` (None at a clean end of file)."""
    try:
        head = stream.read(HEADER)
    except (EOFError, OSError) as exc:  # a truncated gzip stream
        raise RecordError(index, offset, f"the file is truncated or not valid gzip ({exc})") from exc
    if not head:
        return None
    if len(head) < HEADER:
        raise RecordError(index, offset, f"the file ends inside a record header ({len(head)} of {HEADER} bytes): "
                                         "truncated")
    (length,), (crc,) = struct.unpack("<Q", head[:8]), struct.unpack("<I", head[8:])
    if crc != masked_crc(head[:8]):
        raise RecordError(index, offset, "the length CRC does not match (corrupt header)")
    if length > MAX_RECORD:
        raise RecordError(index, offset, f"declares {length} bytes, beyond {MAX_RECORD} (corrupt header)")
    return length


def _body(stream: IO[bytes], index: int, offset: int, length: int) -> bytes:
    try:
        data = stream.read(length)
        tail = stream.read(4)
    except (EOFError, OSError) as exc:
        raise RecordError(index, offset, f"the file is truncated or not valid gzip ({exc})") from exc
    if len(data) < length or len(tail) < 4:
        raise RecordError(index, offset, f"the file ends inside the record ({len(data)} of {length} bytes): "
                                         "truncated")
    if struct.unpack("<I", tail)[0] != masked_crc(data):
        raise RecordError(index, offset, "the data CRC does not match (corrupt record)")
    return data


def scan_records(path: str) -> tuple[list[tuple[int, int]], RecordError | None]:
    """``([(offset, length), ...], problem)``: every intact record header up to the first problem (None if
    the file ends cleanly). Offsets are into the decompressed stream. Data is skipped, not checked."""
    found: list[tuple[int, int]] = []
    compressed = is_gzip(path)
    with open_records(path) as stream:
        size = None if compressed else stream.seek(0, 2)
        stream.seek(0)
        offset = 0
        while True:
            try:
                length = _header(stream, len(found), offset)
                if length is None:
                    return found, None
                _skip(stream, len(found), offset, length, size)
            except RecordError as exc:
                return found, exc
            found.append((offset, length))
            offset += HEADER + length + 4


def _skip(stream: IO[bytes], index: int, offset: int, length: int, size: int | None) -> None:
    """Move past the record's data and data CRC (reading through a gzip stream, seeking in a plain file)."""
    end = offset + HEADER + length + 4
    if size is not None:
        if end > size:
            raise RecordError(index, offset, f"the file ends inside the record ({size - offset - HEADER} of "
                                             f"{length + 4} bytes): truncated")
        stream.seek(end)
        return
    left = length + 4
    try:
        while left:
            got = len(stream.read(min(left, 1 << 20)))
            if got == 0:
                raise RecordError(index, offset, "the file ends inside the record: truncated")
            left -= got
    except (EOFError, OSError) as exc:
        raise RecordError(index, offset, f"the file is truncated or not valid gzip ({exc})") from exc


def read_record(path: str, index: int, offset: int) -> bytes:
    """The data of record ``index`` starting at ``offset``, both CRCs checked."""
    with open_records(path) as stream:
        try:
            stream.seek(offset)
        except (EOFError, OSError) as exc:
            raise RecordError(index, offset, f"the file is truncated or not valid gzip ({exc})") from exc
        length = _header(stream, index, offset)
        if length is None:
            raise RecordError(index, offset, "the file ends before this record: truncated since planning")
        return _body(stream, index, offset, length)
