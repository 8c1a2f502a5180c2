"""The on-disk token cache: built by streaming the corpus through a pool of tokenising processes,
written atomically, checked on every open, shared by every process that asks for it.

An entry is a folder `<cache_dir>/<key[:16]>` holding `train.bin` and `val.bin` (raw token ids,
memory-mapped by readers), `tokenizer.json` and, written last, `manifest.json` with the sizes
and SHA-256 of the token files. The folder is assembled under a temporary name and renamed into
place, so an entry is either complete or absent; one that fails the checks on open (truncated,
altered, from another version) is rebuilt with a one-line warning. A file lock beside the entry
makes concurrent builders (the ranks of a data-parallel run, parallel experiment arms) wait for
the first one and then open what it built; each build appends a line to it (who, when). Layout
and guarantees: docs/DATA.md.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import split
from .corpus import Source
from .formats import DataError, Piece
from .tokenizer import Tokenizer, build_tokenizer, needs_training, tokenizer_from_dict

# Bump when the split, the end-of-document rule or the file layout changes.
CACHE_VERSION = 2
# Text handed to a worker at a time: enough to hide the hand-over, little enough that its
# encodings (HF tokenizers keeps ~100 bytes per token until they are turned into ids) stay small.
CHUNK_CHARS = 1 << 20
BPE_SAMPLE_BYTES = 128 << 20  # BPE merges are learned from at most this much training text
# A pool costs about a second to start (each worker imports the package); below this much
# input, tokenising in this process is faster.
POOL_MIN_BYTES = 8 << 20


@dataclass
class Entry:
    """An opened, checked cache entry."""

    path: Path
    manifest: dict
    tokenizer: Tokenizer

    def tokens(self, which: str) -> np.ndarray:
        n = self.manifest[which]["tokens"]
        dtype = np.dtype(self.manifest["dtype"])
        if n == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(self.path / f"{which}.bin", dtype=dtype, mode="r", shape=(n,))


def get(source: Source, key: str, cache_dir: Path, kind: str, vocab_size: int | None,
        val_fraction: float, workers: int, progress: bool) -> Entry:
    """The entry for `key`, built first if it is missing or invalid."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / key[:16]
    with _lock(cache_dir / f".{key[:16]}.lock") as lock:
        if path.exists():
            try:
                return open_entry(path, key)
            except _Invalid as e:
                _warn(f"token cache {path} is invalid ({e}); rebuilding it")
                shutil.rmtree(path)
        build(path, source, key, kind, vocab_size, val_fraction, workers, progress)
        _record_build(lock)
        return open_entry(path, key)


class _Invalid(Exception):
    pass


def open_entry(path: Path, key: str) -> Entry:
    """Open an entry, checking it is complete and unchanged; `_Invalid` says what is wrong."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        tokenizer = tokenizer_from_dict(json.loads((path / "tokenizer.json").read_text()))
    except (OSError, ValueError, KeyError) as e:
        raise _Invalid(f"manifest or tokenizer unreadable: {type(e).__name__}") from None
    if manifest.get("version") != CACHE_VERSION or manifest.get("key") != key:
        raise _Invalid("written for another corpus, tokenizer or cache version")
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for which in ("train", "val"):
        want = manifest[which]
        f = path / f"{which}.bin"
        size = f.stat().st_size if f.exists() else -1
        if size != want["tokens"] * itemsize:
            raise _Invalid(f"{which}.bin has {size} bytes, the manifest records {want['tokens'] * itemsize}")
        with open(f, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if digest != want["sha256"]:
            raise _Invalid(f"{which}.bin does not match its SHA-256")
    return Entry(path, manifest, tokenizer)


def build(path: Path, source: Source, key: str, kind: str, vocab_size: int | None,
          val_fraction: float, workers: int, progress: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        tokenizer = _tokenizer(source, kind, vocab_size, val_fraction, progress)
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer.to_dict()))
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
        sides = {"train": _Sink(tmp / "train.bin"), "val": _Sink(tmp / "val.bin")}
        try:
            _tokenise(source, tokenizer, dtype, val_fraction, workers, progress, sides)
        finally:
            for sink in sides.values():
                sink.close()
        val = sides["val"]
        if val.documents + sides["train"].documents == 0:
            raise DataError(f"{source.root or source.files[0]}: no text (every document is empty)")
        if val.tokens == 0 or sides["train"].tokens == 0:
            empty = "val" if val.tokens == 0 else "train"
            raise DataError(
                f"{source.root or source.files[0]}: no document fell into the {empty} split "
                f"({sides['train'].documents + val.documents} documents, data.val_fraction = "
                f"{val_fraction}); use more documents or another val_fraction (docs/DATA.md)")
        manifest = {
            "version": CACHE_VERSION,
            "key": key,
            "corpus_name": source.name,
            "split": "tail of the one document" if source.one_document else "whole documents by id hash",
            "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eod_id": tokenizer.eod_id,
            "dtype": np.dtype(dtype).name,
            **{which: sink.summary() for which, sink in sides.items()},
            # bits per byte = loss / ln 2 / this; the end-of-document tokens count in the loss
            # but are not bytes of the text (docs/DATA.md)
            "bytes_per_token_val": val.text_bytes / max(val.tokens, 1),
        }
        # manifest.json goes last: an entry without one is incomplete.
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Sink:
    """An append-only token file that counts and hashes what it is given."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.tokens = self.documents = self.text_bytes = 0

    def write(self, ids: np.ndarray, documents: int, text_bytes: int):
        data = ids.tobytes()
        self.f.write(data)
        self.sha.update(data)
        self.tokens += len(ids)
        self.documents += documents
        self.text_bytes += text_bytes

    def close(self):
        self.f.close()

    def summary(self) -> dict:
        return {"tokens": self.tokens, "documents": self.documents, "text_bytes": self.text_bytes,
                "sha256": self.sha.hexdigest()}


def _sided(source: Source, val_fraction: float, advance=lambda n: None) -> Iterator[tuple[Piece, bool]]:
    pieces = source.pieces(advance)
    if source.one_document:
        return split.by_tail(pieces, source.n_bytes, val_fraction)
    return split.by_document(pieces, val_fraction)


def _tokenizer(source: Source, kind: str, vocab_size: int | None, val_fraction: float,
               progress: bool) -> Tokenizer:
    if not needs_training(kind):
        return build_tokenizer(kind, (), vocab_size)

    def sample() -> Iterator[str]:
        # Training documents only, so val stays unseen; the first BPE_SAMPLE_BYTES of them.
        total = 0
        with tqdm(total=min(source.n_bytes, BPE_SAMPLE_BYTES), unit="B", unit_scale=True,
                  desc=f"BPE sample of {source.name}", disable=None if progress else True,
                  leave=False) as bar:
            for piece, val in _sided(source, val_fraction):
                if val:
                    continue
                n = len(piece.text.encode("utf-8"))
                yield piece.text
                bar.update(n)
                total += n
                if total >= BPE_SAMPLE_BYTES:
                    return

    return build_tokenizer(kind, sample(), vocab_size)


def _tokenise(source: Source, tokenizer: Tokenizer, dtype, val_fraction: float, workers: int,
              progress: bool, sides: dict[str, _Sink]) -> None:
    bar = tqdm(total=source.n_bytes, unit="B", unit_scale=True, desc=f"tokenising {source.name}",
               disable=None if progress else True, smoothing=0.1)  # None: off unless a terminal
    chunks = _chunks(_sided(source, val_fraction, bar.update))
    n_docs = n_tokens = 0
    try:
        if workers <= 1 or source.n_bytes < POOL_MIN_BYTES or not tokenizer.worth_a_pool:
            _init_worker(tokenizer.to_dict(), np.dtype(dtype).str)
            for result in map(_encode_chunk, chunks):
                n_docs, n_tokens = _store(result, sides, bar, n_docs, n_tokens)
        else:
            ctx = multiprocessing.get_context("spawn")  # fork under torch's threads can deadlock
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(tokenizer.to_dict(), np.dtype(dtype).str)) as pool:
                # A bounded window of chunks in flight, consumed in order: memory stays flat
                # however long the corpus (Pool.imap would read the whole input ahead).
                pending: collections.deque = collections.deque()
                for chunk in chunks:
                    pending.append(pool.submit(_encode_chunk, chunk))
                    if len(pending) >= 2 * workers:
                        n_docs, n_tokens = _store(pending.popleft().result(), sides, bar, n_docs, n_tokens)
                while pending:
                    n_docs, n_tokens = _store(pending.popleft().result(), sides, bar, n_docs, n_tokens)
    finally:
        bar.close()


def _chunks(sided: Iterator[tuple[Piece, bool]]) -> Iterator[list[tuple[str, bool, bool]]]:
    chunk, size = [], 0
    for piece, val in sided:
        chunk.append((piece.text, piece.last, val))
        size += len(piece.text)
        if size >= CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _store(result, sides, bar, n_docs: int, n_tokens: int) -> tuple[int, int]:
    for which, (ids, docs, text_bytes) in result.items():
        sides[which].write(ids, docs, text_bytes)
        n_docs += docs
        n_tokens += len(ids)
    bar.set_postfix(docs=f"{n_docs:,}", tokens=f"{n_tokens:,}", refresh=False)
    return n_docs, n_tokens


_worker: dict = {}


def _init_worker(tokenizer: dict, dtype: str) -> None:
    # One tokenizer per worker process: the pool is the parallelism, not tokenizers' threads.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker["tokenizer"] = tokenizer_from_dict(tokenizer)
    _worker["dtype"] = np.dtype(dtype)


def _encode_chunk(chunk: list[tuple[str, bool, bool]]) -> dict:
    """{"train" | "val": (ids, documents ended, UTF-8 bytes of text)} for one chunk."""
    tok, dtype = _worker["tokenizer"], _worker["dtype"]
    encoded = tok.encode_batch([text for text, _, _ in chunk])
    eod = np.asarray([tok.eod_id], dtype=dtype)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    docs = {"train": 0, "val": 0}
    text_bytes = {"train": 0, "val": 0}
    for (text, last, val), ids in zip(chunk, encoded):
        which = "val" if val else "train"
        parts[which].append(np.asarray(ids, dtype=dtype))
        text_bytes[which] += len(text.encode("utf-8"))
        if last:
            parts[which].append(eod)
            docs[which] += 1
    return {which: (np.concatenate(p) if p else np.zeros(0, dtype), docs[which], text_bytes[which])
            for which, p in parts.items()}


@contextlib.contextmanager
def _lock(path: Path):
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _warn(f"waiting for another process using the token cache ({path.name})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _record_build(lock) -> None:
    """One JSON line per build, appended to the entry's lock file (held): which process built
    it and when. Nothing reads it; it shows how often an entry was tokenised (docs/DATA.md)."""
    lock.write((json.dumps({"built_by_pid": os.getpid(), "host": socket.gethostname(),
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n").encode())
    lock.flush()


def _warn(message: str) -> None:
    print(f"attnres: warning: {message}", file=sys.stderr, flush=True)
