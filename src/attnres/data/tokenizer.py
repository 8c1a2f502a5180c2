"""Tokenizers: raw UTF-8 bytes, or a byte-level BPE trained locally on the corpus.

Both map every string to ids and back exactly, so bits per byte is comparable across them.
`to_dict()` is JSON-serialisable and `tokenizer_from_dict` rebuilds the same tokenizer, which is
how the token cache and checkpoints carry a tokenizer without retraining it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from .corpus import Corpus

KINDS = ("byte", "bpe")
DEFAULT_BPE_VOCAB = 4096


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def to_dict(self) -> dict: ...


class ByteTokenizer:
    """One token per UTF-8 byte: no training, no unknowns, vocab 256."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        # A model can sample a byte sequence that is not valid UTF-8; show it, don't fail.
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": "byte"}


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) backed by HF `tokenizers`; built only by `train` or `from_dict`."""

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.name = f"bpe{self.vocab_size}"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB) -> BPETokenizer:
        """Learn merges from `texts` up to `vocab_size` ids (fewer if the text runs out of pairs).

        Training is deterministic: ties between equally frequent pairs are broken by token id,
        so the same texts always give the same merges. Nothing is downloaded.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet):
            raise ValueError(
                f"BPE vocab_size must be at least {len(alphabet)} (one id per byte), got {vocab_size}"
            )
        tok = HFTokenizer(models.BPE())
        # No prefix space: decode(encode(s)) must give back s exactly, leading spaces included.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=alphabet,  # all 256 bytes, so unseen characters still encode
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tok.encode_batch(texts)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def to_dict(self) -> dict:
        return {"kind": "bpe", "json": self._tok.to_str()}

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(d["json"]))


def tokenizer_from_dict(d: dict) -> Tokenizer:
    kind = d.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.from_dict(d)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")


def build_tokenizer(kind: str, corpus: Corpus, vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer of `kind` ("byte" or "bpe"); BPE is trained on every document of `corpus`."""
    if kind == "byte":
        if vocab_size not in (None, ByteTokenizer.vocab_size):
            raise ValueError(f"the byte tokenizer has vocab_size 256, got vocab_size={vocab_size}")
        return ByteTokenizer()
    if kind == "bpe":
        texts = [text for _, text in corpus.documents]
        return BPETokenizer.train(texts, vocab_size or DEFAULT_BPE_VOCAB)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
