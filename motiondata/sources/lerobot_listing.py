"""The LeRobot episode index, held column-wise, and the compact unit listing built over it.

``read_v3_index`` reads only the columns a unit needs from every ``meta/episodes`` parquet; ``read_v2_index``
parses ``meta/episodes.jsonl`` line by line into arrays. Either gives an :class:`EpisodeIndex`: per file a
block of columns (numpy arrays for null-free integer, float and bool columns, ints narrowed to the smallest
dtype that holds them; ``tasks`` as codes into its distinct strings; the arrow array for anything else), plus
each row's ``episode_index`` and whether it is an integer, as arrays. ``row(r)`` rebuilds row ``r`` exactly as
``table.to_pylist()`` / ``json.loads`` gave it (with ``_meta_file``), so the reader's per-row code runs
unchanged.

:class:`EpisodeListing` is the reader's ``unit_listing()``: the rows with a non-integer ``episode_index``
(error units, in row order), then one row per distinct index (the first; sorted, optionally filtered), kept
as two integer arrays; each unit dict is made on access. It holds no Python object per row.
"""

from __future__ import annotations

import bisect
import functools
import json
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from motiondata.errors import SourceError

INT64 = np.iinfo(np.int64)


def narrow(values: np.ndarray) -> np.ndarray:
    """Integers in the smallest signed dtype that holds them (``.item()`` gives the same Python int)."""
    if values.dtype.kind not in "iu" or not len(values):
        return values
    low, high = int(values.min()), int(values.max())
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype)
    return values  # uint64 beyond int64


class StringLists:
    """A null-free ``list<string>`` arrow column (``tasks``) as offsets and codes into its distinct strings;
    ``get(i)`` == ``array[i].as_py()``."""

    def __init__(self, array):
        import pyarrow.compute as pc

        encoded = pc.list_flatten(array).dictionary_encode()
        self.strings = encoded.dictionary.to_pylist()
        self.codes = narrow(encoded.indices.to_numpy(zero_copy_only=False))
        self.offsets = narrow(array.offsets.to_numpy(zero_copy_only=False) - array.offsets[0].as_py())

    def get(self, i: int) -> list[str]:
        strings, codes = self.strings, self.codes
        return [strings[c] for c in codes[self.offsets[i]:self.offsets[i + 1]].tolist()]


def _getter(array) -> Callable[[int], Any]:
    """``i -> array[i].as_py()``, from numpy (null-free integer, float32/64, bool), ``StringLists`` (null-free
    lists of strings) or the arrow array itself (anything else)."""
    import pyarrow as pa

    kind = array.type
    if not array.null_count:
        if pa.types.is_integer(kind) or pa.types.is_boolean(kind) or kind in (pa.float32(), pa.float64()):
            return narrow(array.to_numpy(zero_copy_only=False)).item
        if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and kind.value_type == pa.string() \
                and not array.values.null_count:
            return StringLists(array).get
    return functools.partial(_as_py, array)


def _as_py(array, i: int) -> Any:
    return array[i].as_py()


def _index_of(array, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``episode_index`` values (0 where not an integer) and which rows hold an integer (not bool)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if array is None:
        return np.zeros(rows, np.int64), np.zeros(rows, bool)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if not pa.types.is_integer(array.type):
        return np.zeros(rows, np.int64), np.zeros(rows, bool)
    valid = ~np.asarray(pc.is_null(array).to_numpy(zero_copy_only=False), dtype=bool)
    values = array.fill_null(0).to_numpy(zero_copy_only=False)
    if values.dtype == np.uint64 and len(values) and values.max() > INT64.max:
        return values.astype(object), valid
    return values.astype(np.int64), valid


class Block:
    """The rows of one index file: ``columns`` name -> getter (row number -> the row's value), ``extra``
    row -> a row kept whole (v2.x lines that do not fit the arrays), ``tasks``: v2.x task lists (the
    ``tasks`` getter then gives a code into them, -1 for a row without the key)."""

    def __init__(self, file: str, rows: int, columns: dict[str, Callable[[int], Any]],
                 extra: dict[int, dict] | None = None, tasks: list[list] | None = None):
        self.file, self.rows, self.columns, self.extra, self.tasks = file, rows, columns, extra or {}, tasks

    def row(self, i: int) -> dict:
        if i in self.extra:
            return dict(self.extra[i])
        row = {name: get(i) for name, get in self.columns.items()}
        if self.tasks is not None:
            code = row.pop("tasks")
            if code >= 0:
                row["tasks"] = list(self.tasks[code])
        row["_meta_file"] = self.file
        return row


class EpisodeIndex:
    """The blocks of every index file, in order, with each row's ``episode_index`` and integer flag."""

    def __init__(self, blocks: list[Block], indices: list[np.ndarray], valid: list[np.ndarray]):
        self.blocks = blocks
        self.starts = np.cumsum([0] + [b.rows for b in blocks])[:-1].tolist()
        objects = any(i.dtype == object for i in indices)
        joined = [i.astype(object) if objects else i for i in indices]
        self.index = narrow(np.concatenate(joined)) if joined else np.zeros(0, np.int64)
        self.valid = np.concatenate(valid) if valid else np.zeros(0, bool)

    def __len__(self) -> int:
        return len(self.valid)

    def row(self, r: int) -> dict:
        k = bisect.bisect_right(self.starts, r) - 1
        return self.blocks[k].row(r - self.starts[k])


def read_v3_index(files: list[str], wanted: set[str]) -> EpisodeIndex:
    """The ``wanted`` columns of each ``meta/episodes`` parquet; SourceError for an unreadable file."""
    import pyarrow.parquet as pq

    blocks, indices, valid = [], [], []
    for file in files:
        try:
            names = pq.read_schema(file).names
            table = pq.read_table(file, columns=[n for n in names if n in wanted])
        except Exception as exc:  # noqa: BLE001 - truncated or non-parquet file
            raise SourceError(file, f"cannot read episodes parquet ({type(exc).__name__}: {exc})") from exc
        columns = {name: _getter(table.column(name).combine_chunks()) for name in table.column_names}
        index = table.column("episode_index").combine_chunks() if "episode_index" in table.column_names else None
        values, ok = _index_of(index, table.num_rows)
        blocks.append(Block(file, table.num_rows, columns))
        indices.append(values)
        valid.append(ok)
    return EpisodeIndex(blocks, indices, valid)


V2_KEYS = {"episode_index", "length", "tasks", "_meta_file"}


def _regular(row: dict) -> bool:
    """A v2.x row the arrays hold exactly: only the keys V2_KEYS, int (not bool) episode_index and length in
    int64, tasks absent or a list of strings."""
    index, length, tasks = row.get("episode_index"), row.get("length"), row.get("tasks", [])
    if not row.keys() <= V2_KEYS or type(index) is not int or type(length) is not int:
        return False
    fits = INT64.min <= min(index, length) and max(index, length) <= INT64.max
    return fits and type(tasks) is list and all(type(t) is str for t in tasks)


def read_v2_index(file: str) -> EpisodeIndex:
    """``meta/episodes.jsonl`` (one JSON object a line, blank lines skipped) as arrays; a row that does not
    fit them (``_regular``) is kept whole. SourceError names the first line that is not JSON."""
    from array import array

    index, length, codes, valid = array("q"), array("q"), array("q"), bytearray()
    tasks: dict[tuple, int] = {}
    extra: dict[int, dict] = {}
    big: dict[int, int] = {}  # integer episode_index beyond int64 (kept whole too)
    with open(file, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = dict(json.loads(line), _meta_file=file)
            except ValueError as exc:
                raise SourceError(file, f"line {number} is not JSON ({exc})") from exc
            value, regular, at = row.get("episode_index"), _regular(row), len(valid)
            integer = isinstance(value, int) and not isinstance(value, bool)
            if not regular:
                extra[at] = row
                if integer and not INT64.min <= value <= INT64.max:
                    big[at] = value
            index.append(value if integer and at not in big else 0)
            length.append(row["length"] if regular else 0)
            codes.append(tasks.setdefault(tuple(row["tasks"]), len(tasks)) if regular and "tasks" in row else -1)
            valid.append(integer)
    values = _int_array(index)
    if big:
        values = values.astype(object)
        values[list(big)] = list(big.values())
    columns = {"episode_index": narrow(values).item, "length": narrow(_int_array(length)).item,
               "tasks": narrow(_int_array(codes)).item}
    block = Block(file, len(valid), columns, extra, tasks=[list(t) for t in tasks])
    return EpisodeIndex([block], [values], [np.frombuffer(bytes(valid), bool).copy()])


def _int_array(values) -> np.ndarray:
    return np.frombuffer(values, np.int64).copy() if len(values) else np.zeros(0, np.int64)


def distinct_rows(index: EpisodeIndex, episodes: set[int] | None,
                  on_duplicate: Callable[[dict, int, dict], None]) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose ``episode_index`` is not an integer (row order) and the first row of each distinct
    index (by index, only those in ``episodes`` unless None). Every later row of an index is passed to
    ``on_duplicate(row, index, first_row)`` in row order, whether or not ``episodes`` selects it."""
    bad = np.flatnonzero(~index.valid)
    rows = np.flatnonzero(index.valid)
    values = index.index[rows]
    unique, first = np.unique(values, return_index=True)  # first occurrences (stable sort)
    later = np.ones(len(rows), bool)
    later[first] = False
    for d in np.flatnonzero(later):
        value = values[d]
        owner = rows[first[np.searchsorted(unique, value)]]
        on_duplicate(index.row(int(rows[d])), int(value), index.row(int(owner)))
    order = rows[first]
    if episodes is not None:
        order = order[np.isin(unique, list(episodes))]
    return narrow(bad), narrow(order)


class EpisodeListing(Sequence):
    """A LeRobot source's units, made on access: ``bad_unit(number, row)`` for the rows in ``bad``, then
    ``unit(row)`` for the rows in ``order`` (``row`` as ``EpisodeIndex.row`` rebuilds it)."""

    def __init__(self, index: EpisodeIndex, bad: np.ndarray, order: np.ndarray,
                 bad_unit: Callable[[int, dict], dict], unit: Callable[[dict], dict]):
        self.index, self.bad, self.order, self.bad_unit, self.unit = index, bad, order, bad_unit, unit

    def __repr__(self) -> str:
        return f"EpisodeListing({len(self.order)} episodes, {len(self.bad)} bad rows)"

    def __len__(self) -> int:
        return len(self.bad) + len(self.order)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[p] for p in range(*position.indices(len(self)))]
        p = operator.index(position)
        if p < 0:
            p += len(self)
        if not 0 <= p < len(self):
            raise IndexError(f"listing index {position} out of range ({len(self)} units)")
        if p < len(self.bad):
            number = int(self.bad[p])
            return self.bad_unit(number, self.index.row(number))
        return self.unit(self.index.row(int(self.order[p - len(self.bad)])))

    def __iter__(self):
        for p in range(len(self)):
            yield self[p]

    def unit_ids(self, chunk: int = 1 << 16) -> Iterator[str]:
        """``unit["id"]`` of every unit in order, without making the units (what the planner's scan needs)."""
        for number in self.bad.tolist():
            yield f"episode_row_{number}"  # error_unit's safe_id leaves it as it is
        for lo in range(0, len(self.order), chunk):
            for value in self.index.index[self.order[lo:lo + chunk]].tolist():
                yield f"episode_{value:06d}"  # also the id of an error unit for a bad row (safe_id keeps it)
