"""Token splits, their on-disk cache, and batches that depend only on (seed, step).

`prepare_data` turns a corpus into train/val token arrays once and caches them as .npy files
keyed by everything that shapes the tokens, so later runs memory-map them instantly.
`BatchLoader.get(step)` is a pure function of (seed, step): a run resumed at step k sees
exactly the batches an uninterrupted run would, with no loader state in the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .corpus import Corpus, DataError, load_documents
from .tokenizer import DEFAULT_BPE_VOCAB, Tokenizer, build_tokenizer, tokenizer_from_dict

DOC_SEPARATOR = "\n\n"
# Bump when the split, the separator or the file layout changes, so old caches are not reused.
_CACHE_VERSION = 1


@dataclass
class TokenData:
    train: np.ndarray  # 1-D uint16/uint32, memory-mapped from the cache
    val: np.ndarray
    tokenizer: Tokenizer
    bytes_per_token_val: float  # bits per byte = loss_nats / ln 2 / bytes_per_token_val
    corpus_name: str
    fingerprint: str  # cache key: corpus, tokenizer spec and split
    cache_path: Path | None = None


def split_document(text: str, val_fraction: float) -> tuple[str, str]:
    """Split one document into (train head, val tail), the tail about `val_fraction` of its characters.

    The cut moves to the nearest newline within half the tail's length, so val starts on a
    fresh line; the newline itself is dropped. With no newline that close it cuts mid-line.
    """
    n = len(text)
    n_val = round(n * val_fraction)
    if n_val == 0:
        return text, ""
    cut = n - n_val
    slack = n_val // 2
    before = text.rfind("\n", max(cut - slack, 0), cut + 1)
    after = text.find("\n", cut, cut + slack + 1)
    candidates = [p for p in (before, after) if p != -1]
    if not candidates:
        return text[:cut], text[cut:]
    nl = min(candidates, key=lambda p: abs(p - cut))
    return text[:nl], text[nl + 1 :]


def prepare_data(
    source: str | Corpus | None,
    tokenizer_kind: str = "byte",
    vocab_size: int | None = None,
    val_fraction: float = 0.05,
    cache_dir: str | os.PathLike = "cache/tokens",
) -> TokenData:
    """Load, split, tokenize and cache `source`; a repeat call memory-maps the cached tokens.

    Each document's tail goes to val and the rest to train (see `split_document`). BPE is
    trained on the train side only, so val stays unseen. Documents are encoded one by one and
    joined with the tokens of a blank line, so no token straddles two documents.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    corpus = source if isinstance(source, Corpus) else load_documents(source)
    if tokenizer_kind == "bpe" and vocab_size is None:
        vocab_size = DEFAULT_BPE_VOCAB

    key = _cache_key(corpus, tokenizer_kind, vocab_size, val_fraction)
    path = Path(cache_dir) / key[:16]
    if not (path / "meta.json").exists():
        _build_cache(path, corpus, tokenizer_kind, vocab_size, val_fraction, key)
    return _load_cache(path)


def _cache_key(corpus: Corpus, kind: str, vocab_size: int | None, val_fraction: float) -> str:
    spec = {
        "version": _CACHE_VERSION,
        "corpus": corpus.fingerprint,
        "tokenizer": kind,
        "vocab_size": vocab_size,
        "val_fraction": val_fraction,
    }
    if kind == "bpe":
        import tokenizers

        # Merges learned by another release of the library could differ.
        spec["tokenizers"] = tokenizers.__version__
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _build_cache(path: Path, corpus: Corpus, kind: str, vocab_size: int | None,
                 val_fraction: float, key: str):
    splits = [(doc_id, *split_document(text, val_fraction)) for doc_id, text in corpus.documents]
    train_texts = [train for _, train, _ in splits if train]
    val_texts = [val for _, _, val in splits if val]
    train_corpus = Corpus.from_documents(f"{corpus.name}-train", [(d, t) for d, t, _ in splits if t])
    tokenizer = build_tokenizer(kind, train_corpus, vocab_size)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    train = _encode_documents(tokenizer, train_texts, dtype)
    val = _encode_documents(tokenizer, val_texts, dtype)
    val_bytes = len(DOC_SEPARATOR.join(val_texts).encode("utf-8"))
    meta = {
        "key": key,
        "corpus_name": corpus.name,
        "corpus_fingerprint": corpus.fingerprint,
        "n_documents": len(corpus.documents),
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "val_fraction": val_fraction,
        "dtype": np.dtype(dtype).name,
        "train_tokens": len(train),
        "val_tokens": len(val),
        "val_bytes": val_bytes,
        "bytes_per_token_val": val_bytes / max(len(val), 1),
    }
    path.mkdir(parents=True, exist_ok=True)
    _write_atomic(path / "train.npy", lambda f: np.save(f, train))
    _write_atomic(path / "val.npy", lambda f: np.save(f, val))
    _write_atomic(path / "tokenizer.json", lambda f: f.write(json.dumps(tokenizer.to_dict()).encode()))
    # meta.json goes last: its presence is what marks the entry complete.
    _write_atomic(path / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))


def _encode_documents(tokenizer: Tokenizer, texts: list[str], dtype) -> np.ndarray:
    if not texts:
        return np.zeros(0, dtype=dtype)
    encode_batch = getattr(tokenizer, "encode_batch", None)
    encoded = encode_batch(texts) if encode_batch else [tokenizer.encode(t) for t in texts]
    sep = np.asarray(tokenizer.encode(DOC_SEPARATOR), dtype=dtype)
    parts = []
    for i, ids in enumerate(encoded):
        if i:
            parts.append(sep)
        parts.append(np.asarray(ids, dtype=dtype))
    return np.concatenate(parts)


def _write_atomic(dest: Path, write):
    # A crash or a second process writing the same entry never leaves a half-written file behind.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_cache(path: Path) -> TokenData:
    meta = json.loads((path / "meta.json").read_text())
    tokenizer = tokenizer_from_dict(json.loads((path / "tokenizer.json").read_text()))
    return TokenData(
        train=np.load(path / "train.npy", mmap_mode="r"),
        val=np.load(path / "val.npy", mmap_mode="r"),
        tokenizer=tokenizer,
        bytes_per_token_val=meta["bytes_per_token_val"],
        corpus_name=meta["corpus_name"],
        fingerprint=meta["key"],
        cache_path=path,
    )


def check_length(tokens: np.ndarray, seq_len: int, what: str):
    """Raise a DataError unless `tokens` holds at least one (x, y) window of `seq_len`."""
    if len(tokens) < seq_len + 1:
        raise DataError(
            f"the {what} split has {len(tokens)} tokens, too few for one sequence of seq_len={seq_len} "
            f"(needs {seq_len + 1}); use more text, a shorter seq_len or a larger val_fraction"
        )


class BatchLoader:
    """Random training windows; batch `step` is a pure function of (seed, step).

    With `world_size` > 1 every rank draws the same global batch of `batch_size * world_size`
    windows and keeps its own slice, so the data a run sees does not depend on how many
    processes share it. Tensors stay on the CPU; moving them is the caller's job.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, *,
                 rank: int = 0, world_size: int = 1, what: str = "train"):
        check_length(tokens, seq_len, what)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 [batch_size, seq_len]; y[:, t] is the token after x[:, t]."""
        rng = np.random.Generator(np.random.PCG64([self.seed, step]))
        n_starts = len(self.tokens) - self.seq_len  # start + seq_len + 1 <= len(tokens)
        starts = rng.integers(0, n_starts, size=self.batch_size * self.world_size)
        starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return _windows(self.tokens, starts, self.seq_len)


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int,
                 max_batches: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, non-overlapping windows spread evenly over `tokens`, grouped into batches.

    The same split always gives the same batches. When there are at least `batch_size`
    windows every batch is full (a leftover remainder is dropped); otherwise one short batch.
    `max_batches=None` takes every window.
    """
    check_length(tokens, seq_len, "val")
    n_windows = (len(tokens) - 1) // seq_len
    wanted = n_windows if max_batches is None else min(n_windows, max_batches * batch_size)
    if wanted >= batch_size:
        wanted -= wanted % batch_size
    picks = (np.arange(wanted) * n_windows) // wanted  # evenly spaced window indices
    starts = picks * seq_len
    return [_windows(tokens, starts[i : i + batch_size], seq_len) for i in range(0, wanted, batch_size)]


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)
    window = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()
