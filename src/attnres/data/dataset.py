"""Token splits from the token cache, and batches that depend only on (seed, step).

`prepare_data` streams a corpus into the on-disk token cache once (`cache`), keyed by
everything that shapes the tokens, so later runs memory-map them instantly.
`BatchLoader.get(step)` is a pure function of (seed, step): a run resumed at step k sees
exactly the batches an uninterrupted run would, with no loader state in the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import cache
from .corpus import open_source
from .formats import DataError
from .tokenizer import DEFAULT_BPE_VOCAB, KINDS, Tokenizer, is_known, tokenizer_file


@dataclass
class TokenData:
    train: np.ndarray  # 1-D uint16/uint32, memory-mapped from the cache
    val: np.ndarray
    tokenizer: Tokenizer
    bytes_per_token_val: float  # bits per byte = loss_nats / ln 2 / bytes_per_token_val
    corpus_name: str
    fingerprint: str  # the tokens and tokenizer: equal exactly when the data a run sees is
    cache_path: Path | None = None


def prepare_data(
    source: str | None,
    tokenizer_kind: str = "byte",
    vocab_size: int | None = None,
    val_fraction: float = 0.05,
    cache_dir: str | os.PathLike = "cache/tokens",
    *,
    workers: int = 0,
    text_column: str = "text",
    progress: bool = True,
) -> TokenData:
    """Tokenise `source` into the cache (streamed, `workers` processes; 0 = one per CPU) unless
    an up-to-date entry is there, then memory-map it.

    Documents are kept whole: each goes to train or val by a hash of its id and ends with the
    tokenizer's end-of-document id; a corpus that is one text file is split by its tail instead
    (`split`). BPE is trained on a bounded sample of the train side only, so val stays unseen.
    Concurrent callers (the ranks of a data-parallel run) wait for one build and share it.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not is_known(tokenizer_kind):
        raise ValueError(f"unknown tokenizer kind {tokenizer_kind!r}; expected one of {KINDS} "
                         f"or a tokenizer.json path")
    src = open_source(source, text_column)
    if tokenizer_kind == "bpe" and vocab_size is None:
        vocab_size = DEFAULT_BPE_VOCAB
    key = _cache_key(src, tokenizer_kind, vocab_size, val_fraction, text_column)
    entry = cache.get(src, key, Path(cache_dir), tokenizer_kind, vocab_size, val_fraction,
                      workers or os.cpu_count() or 1, progress)
    m = entry.manifest
    content = json.dumps([m["train"]["sha256"], m["val"]["sha256"], entry.tokenizer.to_dict()])
    return TokenData(
        train=entry.tokens("train"),
        val=entry.tokens("val"),
        tokenizer=entry.tokenizer,
        bytes_per_token_val=m["bytes_per_token_val"],
        corpus_name=m["corpus_name"],
        fingerprint=hashlib.sha256(content.encode()).hexdigest(),
        cache_path=entry.path,
    )


def _cache_key(src, kind: str, vocab_size: int | None, val_fraction: float, text_column: str) -> str:
    spec = {
        "version": cache.CACHE_VERSION,
        "corpus": src.name,
        "files": src.identity(),  # touching or editing any input rebuilds the entry
        "text_column": text_column,
        "tokenizer": kind,
        "vocab_size": vocab_size,
        "val_fraction": val_fraction,
    }
    if kind == "bpe":
        import tokenizers

        # Merges learned by another release of the library, or from another sample, could differ.
        spec["tokenizers"] = tokenizers.__version__
        spec["bpe_sample_bytes"] = cache.BPE_SAMPLE_BYTES
    elif kind not in KINDS:  # a tokenizer.json: its contents, so an edited file rebuilds
        spec["tokenizer_sha256"] = hashlib.sha256(tokenizer_file(kind).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


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
