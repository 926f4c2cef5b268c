"""Exact numpy twin of the ``tokenizers`` byte-level BPE encode pipeline, for whole batches of FAST texts.

The Rust tokenizer costs tens of microseconds per input (string bookkeeping per call), which dominates FAST
encoding. FAST texts are short strings over a small alphabet, so the same result can be computed for a
whole batch with array operations:

1. Split: the ByteLevel pre-tokenizer's GPT-2 pattern
   ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`` as run-length rules over
   per-character classes (letter / number / other / whitespace). The classes are probed from the Rust
   pre-tokenizer itself, so they follow its Unicode tables.
   Pieces are also cut between two characters that no vocabulary token spans (no merge can cross there,
   so BPE of the two sides is independent): shorter pieces repeat more often.
2. Look each piece up in a cache of pieces already encoded (64-bit hash, then an exact comparison of the
   characters); encode the new ones.
3. BPE of a new piece: UTF-8 bytes -> byte-level symbols -> vocabulary ids (unknown symbols dropped, as the
   Rust model does without an unk token), then repeatedly merge the pair with the lowest merge rank,
   leftmost first: the order of the Rust ``Word::merge_all`` heap (a stale heap entry can never pass its
   validity check with a different split of the same span). Done for all new pieces at once, one rank per
   piece per round; when ranks follow creation order (as ``BpeTrainer`` makes them) all non-overlapping
   occurrences of that pair merge in the same round, which is what the sequential algorithm does next.
4. Concatenate each text's piece tokens.

Only pipelines exactly like the reference's qualify (:func:`supported`); the caller checks the result
against the Rust tokenizer once per instance and falls back to it on any disagreement or hash collision.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import threading
from typing import Iterator

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers

LETTER, NUMBER, OTHER, SPACE = 0, 1, 2, 3
_INF = np.iinfo(np.int64).max
_RANK_NONE = np.iinfo(np.int32).max  # no merge for this pair
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_HASH_LEN = np.uint64(0xC2B2AE3D27D4EB4F)
_DENSE_MAX_VOCAB = 2048
_CACHE_MAX_CHARS = 1 << 22  # characters of cached pieces (int32): 16 MB, then the cache restarts
_CONTRACTIONS_2 = tuple(map(ord, "stmd"))  # 's 't 'm 'd
_CONTRACTIONS_3 = tuple((ord(a), ord(b)) for a, b in ("re", "ve", "ll"))


def supported(tokenizer: Tokenizer) -> bool:
    """True for the reference pipeline: no normaliser, no added tokens, ByteLevel split without prefix
    space, plain BPE (no dropout, unk, prefixes/suffixes, byte fallback or ignore_merges)."""
    config = json.loads(tokenizer.to_str())
    pre, model = config.get("pre_tokenizer") or {}, config.get("model") or {}
    return (config.get("normalizer") is None and not config.get("added_tokens")
            and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space") and pre.get("use_regex", True)
            and model.get("type") == "BPE" and model.get("dropout") is None and model.get("unk_token") is None
            and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
            and not model.get("byte_fallback") and not model.get("ignore_merges"))


@functools.lru_cache(maxsize=8)
def char_classes(bound: int) -> np.ndarray:
    """Class of every code point below ``bound``, probed from the Rust ByteLevel pre-tokenizer: a character
    joins a leading ``a`` / ``1`` / ``!`` into one piece iff it is a letter / number / other."""
    probe = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    classes = np.full(bound, SPACE, np.uint8)
    for code in range(bound):
        for kind, lead in ((LETTER, "a"), (NUMBER, "1"), (OTHER, "!")):
            if len(probe.pre_tokenize_str(lead + chr(code))) == 1:
                classes[code] = kind
                break
    return classes


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2 ``bytes_to_unicode``: printable bytes map to themselves, the rest to U+0100 onwards."""
    kept = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in kept}
    extra = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return table


def piece_starts(codes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``[B, n]`` bool: True where a pre-tokenizer piece starts (row starts included)."""
    cls = classes[codes]
    space = cls == SPACE
    start = np.empty(codes.shape, bool)
    start[:, 0] = True
    np.not_equal(cls[:, 1:], cls[:, :-1], out=start[:, 1:])
    # \s+(?!\S): a whitespace run followed by a non-space keeps its last character apart ...
    tail = space[:, :-1] & ~space[:, 1:]
    start[:, :-1] |= tail
    # ... which, when it is U+0020, becomes the optional prefix of the next letter/number/other piece.
    start[:, 1:] &= ~(tail & (codes[:, :-1] == 0x20))
    apostrophe = start & (codes == 0x27)
    if apostrophe.any():
        _contractions(codes, start, apostrophe)
    return start


def _contractions(codes: np.ndarray, start: np.ndarray, apostrophe: np.ndarray) -> None:
    """A piece starting with an apostrophe followed by s/t/m/d or re/ve/ll is that contraction alone."""
    n = codes.shape[1]
    rows, cols = np.nonzero(apostrophe)
    nxt = np.where(cols + 1 < n, codes[rows, np.minimum(cols + 1, n - 1)], -1)
    nxt2 = np.where(cols + 2 < n, codes[rows, np.minimum(cols + 2, n - 1)], -1)
    three = np.logical_or.reduce([(nxt == a) & (nxt2 == b) for a, b in _CONTRACTIONS_3])
    length = np.where(np.isin(nxt, _CONTRACTIONS_2), 2, np.where(three, 3, 0))
    rows, cols, length = rows[length > 0], cols[length > 0], length[length > 0]
    start[rows, cols + 1] = False
    start[rows[length == 3], cols[length == 3] + 2] = False
    after = cols + length < n
    start[rows[after], (cols + length)[after]] = True


class _MergeTable:
    """Pair (left id, right id) -> (merge rank, new id), as dense tables for small vocabularies."""

    def __init__(self, vocab: dict[str, int], merges: list[list[str]]):
        self.size = max(vocab.values()) + 1
        left = np.array([vocab[a] for a, _ in merges], np.int64)
        right = np.array([vocab[b] for _, b in merges], np.int64)
        new = np.array([vocab[a + b] for a, b in merges], np.int64)
        keys = left * self.size + right
        self.unique = np.unique(keys).size == keys.size  # duplicate pairs would make ranks ambiguous
        created = np.full(self.size, len(new), np.int64)
        created[new[::-1]] = np.arange(len(new))[::-1]
        is_base = np.ones(self.size, bool)
        is_base[new] = False
        ranks = np.arange(len(keys))
        # rank order == creation order: every merge only uses base tokens or tokens of earlier merges
        left_ready, right_ready = (created[left] < ranks) | is_base[left], (created[right] < ranks) | is_base[right]
        self.monotone = bool((left_ready & right_ready).all())
        self.self_pair = np.append(left == right, False)  # per rank (and for -1): merges (A, A)
        if self.size <= _DENSE_MAX_VOCAB:
            self.rank_table = np.full(self.size * self.size, -1, np.int32)
            self.new_table = np.zeros(self.size * self.size, np.int32)
            self.rank_table[keys], self.new_table[keys] = ranks, new
            self.keys = None
        else:
            order = np.argsort(keys, kind="stable")
            self.keys, self.ranks, self.news = np.append(keys[order], -1), np.append(ranks[order], -1).astype(
                np.int32), np.append(new[order], 0).astype(np.int32)

    def lookup(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rank, -1 when no merge; new id) for each pair."""
        keys = left.astype(np.int64) * self.size + right
        if self.keys is None:
            return self.rank_table[keys], self.new_table[keys]
        idx = np.searchsorted(self.keys[:-1], keys)
        hit = self.keys[idx] == keys
        return np.where(hit, self.ranks[idx], -1), self.news[idx]


class VectorBPE:
    """Batch encoder for texts given as code-point arrays ``[B, n]`` with every value below ``bound``.
    Keeps a cache of encoded pieces (not thread-safe across instances sharing it; guarded by a lock)."""

    def __init__(self, tokenizer: Tokenizer, bound: int):
        self.bound = int(bound)
        config = json.loads(tokenizer.to_str())["model"]
        vocab: dict[str, int] = config["vocab"]
        merges = [m.split(" ", 1) if isinstance(m, str) else m for m in config.get("merges", [])]
        self.table = _MergeTable(vocab, merges)
        alphabet = byte_level_alphabet()
        self.init_ids = np.full((self.bound, 3), -1, np.int32)
        self.init_len = np.zeros(self.bound, np.int64)
        for code in range(self.bound):
            ids = [vocab[alphabet[b]] for b in chr(code).encode("utf-8") if alphabet[b] in vocab]
            self.init_ids[code, :len(ids)], self.init_len[code] = ids, len(ids)
        self.joinable = self._joinable(vocab, alphabet)
        encoded = [chr(code).encode("utf-8") for code in range(self.bound)]
        self.first_byte = np.array([e[0] for e in encoded], np.uint8)
        self.last_byte = np.array([e[-1] for e in encoded], np.uint8)
        # a character with a byte the vocabulary lacks loses that symbol, so its neighbours meet: never cut there
        self.complete = self.init_len == np.array([len(e) for e in encoded])
        self._lock = threading.Lock()
        self._reset_cache()

    def _joinable(self, vocab: dict[str, int], alphabet: dict[int, str]) -> np.ndarray:
        """``[256, 256]`` bool over (last byte of a character, first byte of the next): may a token span
        that boundary? Only if some vocabulary token holds the two bytes side by side. Where none does, no
        merge ever crosses, so BPE of the two sides is independent: cutting there gives shorter, more
        often repeated pieces and the same ids."""
        byte_of = {char: b for b, char in alphabet.items()}
        pairs = np.zeros((256, 256), bool)
        for token in vocab:
            if len(token) > 1 and all(c in byte_of for c in token):
                data = [byte_of[c] for c in token]
                pairs[data[:-1], data[1:]] = True
        return pairs

    def is_exact(self) -> bool:
        return self.table.unique

    def _reset_cache(self) -> None:
        self._keys = np.zeros(0, np.uint64)  # sorted piece hashes
        self._chr_off = np.zeros(0, np.int64)  # where each cached piece's characters start in _chars
        self._chr_len = np.zeros(0, np.int64)
        self._tok_off = np.zeros(0, np.int64)
        self._tok_len = np.zeros(0, np.int64)
        self._chars = np.zeros(0, np.int32)
        self._tokens = np.zeros(0, np.int32)

    # ------------------------------------------------------------ encode
    def encode(self, codes: np.ndarray) -> list[list[int]] | None:
        """Token ids per row, or None if two different pieces hashed alike (the caller falls back)."""
        codes = np.ascontiguousarray(codes, dtype=np.int32)
        rows, n = codes.shape
        if rows == 0 or n == 0:
            return [[] for _ in range(rows)]
        flat = codes.reshape(-1)
        cuts = piece_starts(codes, char_classes(self.bound))
        apart = ~self.joinable[self.last_byte[codes[:, :-1]], self.first_byte[codes[:, 1:]]]
        cuts[:, 1:] |= apart & self.complete[codes[:, :-1]] & self.complete[codes[:, 1:]]
        starts = np.flatnonzero(cuts.reshape(-1))
        lengths = np.diff(np.append(starts, flat.size))
        pos = np.arange(flat.size) - np.repeat(starts, lengths)
        powers = np.cumprod(np.full(n, _HASH_MUL, np.uint64))
        keys = np.add.reduceat(flat.astype(np.uint64) * powers[pos], starts) ^ (lengths.astype(np.uint64) * _HASH_LEN)
        with self._lock:
            idx = self._lookup(keys, flat, starts, lengths)
            if (self._chr_len[idx] != lengths).any() \
                    or (self._chars[np.repeat(self._chr_off[idx], lengths) + pos] != flat).any():
                return None
            counts, offsets = self._tok_len[idx], self._tok_off[idx]
            gather = np.repeat(offsets - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
            ids = self._tokens[gather].tolist()
        ends = np.cumsum(np.bincount(starts // n, weights=counts, minlength=rows).astype(np.int64)).tolist()
        with _gc_paused():  # thousands of new lists would trigger collections that rescan everything
            return [ids[a:b] for a, b in zip([0, *ends[:-1]], ends)]

    def _lookup(self, keys: np.ndarray, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Cache index of every piece, encoding and inserting the pieces not seen before."""
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        if self._keys.size:
            found = np.minimum(np.searchsorted(self._keys, uniq), self._keys.size - 1)
            new = self._keys[found] != uniq
        else:
            new = np.ones(uniq.size, bool)
        if new.any():
            first = first[new]
            if self._keys.size and self._chars.size + int(lengths[first].sum()) > _CACHE_MAX_CHARS:
                self._reset_cache()
                return self._lookup(keys, flat, starts, lengths)
            self._insert(uniq[new], flat, starts[first], lengths[first])
        return np.searchsorted(self._keys, uniq)[inverse]

    def _insert(self, new_keys: np.ndarray, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
        """BPE the new pieces (sorted, distinct keys) and add them to the cache."""
        tokens, counts = self._bpe(flat, starts, lengths)
        at = np.searchsorted(self._keys, new_keys)
        chars = flat[np.repeat(starts, lengths) + _ranges(lengths)]
        self._keys = np.insert(self._keys, at, new_keys)
        self._chr_off = np.insert(self._chr_off, at, self._chars.size + np.cumsum(lengths) - lengths)
        self._chr_len = np.insert(self._chr_len, at, lengths)
        self._tok_off = np.insert(self._tok_off, at, self._tokens.size + np.cumsum(counts) - counts)
        self._tok_len = np.insert(self._tok_len, at, counts)
        self._chars = np.concatenate([self._chars, chars.astype(np.int32)])
        self._tokens = np.concatenate([self._tokens, tokens])

    def _bpe(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BPE of distinct pieces: (all tokens in piece order, token count per piece)."""
        count = len(starts)
        chars = flat[np.repeat(starts, lengths) + _ranges(lengths)]
        per_char = self.init_len[chars]
        symbols = self.init_ids[chars][np.arange(3)[None, :] < per_char[:, None]]
        segment = np.repeat(np.repeat(np.arange(count, dtype=np.int32), lengths), per_char)
        sizes = np.bincount(segment, minlength=count)
        seg_start = (np.cumsum(sizes) - sizes)[sizes > 0]
        rank = np.full(symbols.size, _RANK_NONE, np.int32)
        self._set_ranks(symbols, segment, rank, np.arange(symbols.size - 1))
        done_sym, done_seg = [], []
        while symbols.size:
            symbols, segment, rank, seg_start, finished = self._merge_round(symbols, segment, rank, seg_start)
            if finished is not None:
                done_sym.append(finished[0])
                done_seg.append(finished[1])
        if not done_sym:
            return np.zeros(0, np.int32), np.zeros(count, np.int64)
        symbols, segment = np.concatenate(done_sym), np.concatenate(done_seg)
        order = np.argsort(segment, kind="stable")
        return symbols[order], np.bincount(segment, minlength=count)

    def _set_ranks(self, symbols: np.ndarray, segment: np.ndarray, rank: np.ndarray, at: np.ndarray) -> None:
        """Write the merge rank (``_RANK_NONE`` if none) of the pair starting at each index in ``at``."""
        at = at[at >= 0]
        rank[at[at >= symbols.size - 1]] = _RANK_NONE  # the last symbol starts no pair
        at = at[at < symbols.size - 1]
        found, _ = self.table.lookup(symbols[at], symbols[at + 1])
        rank[at] = np.where((found >= 0) & (segment[at] == segment[at + 1]), found, _RANK_NONE)

    def _merge_round(self, symbols: np.ndarray, segment: np.ndarray, rank: np.ndarray, seg_start: np.ndarray) -> tuple:
        """Merge in every piece that still has a mergeable pair (see the module doc) and drop the pieces
        that have none. Returns (symbols, segment, rank, seg_start, (finished symbols, segments) | None)."""
        size = symbols.size
        seg_len = np.diff(seg_start, append=size)
        if self.table.monotone:
            score, none = rank, _RANK_NONE
        else:  # one merge per piece: the lowest rank, then the leftmost
            score, none = np.where(rank < _RANK_NONE, rank.astype(np.int64) * size + np.arange(size), _INF), _INF
        best = np.minimum.reduceat(score, seg_start)
        done = best == none
        best[done] = -1  # never equals a score: finished pieces choose nothing
        chosen = score == np.repeat(best, seg_len)
        if self.table.monotone and self.table.self_pair[best[~done]].any():
            run_start = chosen & ~np.r_[False, chosen[:-1]]  # A A A with merge (A, A): every other one
            first = np.flatnonzero(run_start)
            offset = np.arange(size) - first[np.maximum(np.cumsum(run_start) - 1, 0)]
            chosen &= offset % 2 == 0
        left = np.flatnonzero(chosen)
        keep = np.repeat(~done, seg_len)
        finished = (symbols[~keep], segment[~keep]) if done.any() else None
        symbols[left] = self.table.lookup(symbols[left], symbols[left + 1])[1]
        keep[left + 1] = False
        index = np.cumsum(keep) - 1  # where each kept symbol lands after compaction
        moved, seg_start = index[left], index[seg_start[~done]]
        symbols, segment, rank = symbols[keep], segment[keep], rank[keep]
        self._set_ranks(symbols, segment, rank, np.concatenate([moved - 1, moved]))
        return symbols, segment, rank, seg_start, finished


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(l) for l in lengths])`` without a loop."""
    total = int(lengths.sum())
    return np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
