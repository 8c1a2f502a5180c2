"""Tokenizers: raw UTF-8 bytes, a byte-level BPE trained locally on the corpus, or a pretrained
model's own `tokenizer.json` (a file, or the transformers model folder holding it; read from disk,
never downloaded), so a converted checkpoint trains with its vocabulary (docs/HF.md#continued-training).

Both map every string to ids and back exactly, so bits per byte is comparable across them, and
both have one more id, `eod_id`, which the token cache puts after every document and which no
text ever encodes to (docs/DATA.md). `to_dict()` is JSON-serialisable and `tokenizer_from_dict`
rebuilds the same tokenizer, which is how the token cache and checkpoints carry a tokenizer
without retraining it.

A new kind is a class with the `Tokenizer` methods plus two class methods, `build(texts,
vocab_size)` (`texts` an iterator over a bounded sample of the training documents, consumed only
when `needs_training`) and `from_dict(d)`, entered in `_KINDS` under the name `data.tokenizer`
uses for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .formats import DataError, cut_point

DEFAULT_BPE_VOCAB = 4096
_SEGMENT_CHARS = 4096
EOD_TEXT = "<|endoftext|>"  # the BPE vocabulary's name for the end-of-document id


class Tokenizer(Protocol):
    name: str
    vocab_size: int         # every id, the end-of-document one included
    eod_id: int | None      # None only for tokenizers saved before documents had ends
    needs_training: bool
    worth_a_pool: bool      # whether tokenising in worker processes beats one process

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[Sequence[int]]: ...  # lists or int arrays
    def decode(self, ids: Sequence[int]) -> str: ...
    def to_dict(self) -> dict: ...


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0-255), and id 256 for the end of a document: vocab 257.

    `eod=False` is the 256-id vocabulary of checkpoints saved before the end-of-document id.
    """

    name = "byte"
    needs_training = False
    # Encoding is a copy of the UTF-8 bytes: handing text to a worker process costs more than
    # encoding it (docs/BENCHMARKS.md), so the cache encodes bytes in its own process.
    worth_a_pool = False

    def __init__(self, eod: bool = True):
        self.eod_id = 256 if eod else None
        self.vocab_size = 257 if eod else 256

    @classmethod
    def build(cls, texts: Iterable[str] | None = None, vocab_size: int | None = None) -> ByteTokenizer:
        if vocab_size not in (None, 257):
            raise ValueError(f"the byte tokenizer has vocab_size 257 (256 bytes + end of document), "
                             f"got vocab_size={vocab_size}")
        return cls()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # arrays, not lists: the token cache encodes gigabytes through here
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        # A model can sample a byte sequence that is not valid UTF-8; show it, don't fail. The
        # end-of-document id is not text (as HF tokenizers skip special tokens).
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": "byte", "eod": self.eod_id is not None}

    @classmethod
    def from_dict(cls, d: dict) -> ByteTokenizer:
        return cls(eod=bool(d.get("eod", False)))


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) backed by HF `tokenizers`; built only by `train` or `from_dict`."""

    needs_training = True
    worth_a_pool = True

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        # Text that happens to contain "<|endoftext|>" encodes as its bytes, never as the id.
        self._tok.encode_special_tokens = True
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.eod_id = hf_tokenizer.token_to_id(EOD_TEXT)
        self.name = f"bpe{self.vocab_size}"

    @classmethod
    def build(cls, texts: Iterable[str], vocab_size: int | None = None) -> BPETokenizer:
        return cls.train(texts, vocab_size or DEFAULT_BPE_VOCAB)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB) -> BPETokenizer:
        """Learn merges from `texts` (any iterable, streamed) up to `vocab_size` ids, the
        end-of-document id included (fewer if the text runs out of pairs).

        Training is deterministic: ties between equally frequent pairs are broken by token id,
        so the same texts always give the same merges. Nothing is downloaded.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise ValueError(f"BPE vocab_size must be at least {len(alphabet) + 1} (one id per "
                             f"byte and the end of document), got {vocab_size}")
        tok = HFTokenizer(models.BPE())
        # No prefix space: decode(encode(s)) must give back s exactly, leading spaces included.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=alphabet,  # all 256 bytes, so unseen characters still encode
            special_tokens=[EOD_TEXT],  # id 0
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # HF tokenizers slow down on long inputs (2 MB/s on 1 MB strings, 9 on 4 KB segments
        # here), so long texts go in as segments cut where the tokens cannot change.
        segments, owner = [], []
        for i, text in enumerate(texts):
            while (cut := cut_point(text, _SEGMENT_CHARS)) is not None:
                segments.append(text[:cut])
                owner.append(i)
                text = text[cut:]
            segments.append(text)
            owner.append(i)
        out: list[list[int]] = [[] for _ in texts]
        for i, enc in zip(owner, self._tok.encode_batch_fast(segments, add_special_tokens=False)):
            out[i] += enc.ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def to_dict(self) -> dict:
        return {"kind": "bpe", "json": self._tok.to_str()}

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(d["json"]))


# end-of-text tokens of common pretrained vocabularies, tried when tokenizer_config.json names none
END_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")


class FileTokenizer(BPETokenizer):
    """A pretrained tokenizer from its `tokenizer.json`; the end-of-document id is the model's
    end-of-text token (`eos_token` of tokenizer_config.json, else one of END_TOKENS)."""

    needs_training = False

    def __init__(self, hf_tokenizer, eod_id: int, source: str):
        super().__init__(hf_tokenizer)
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.eod_id = eod_id
        self.source = source
        self.name = f"file:{Path(source).name}"

    @classmethod
    def load(cls, path: str) -> FileTokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        file = tokenizer_file(path)
        if file is None:
            raise DataError(f"data.tokenizer = {path!r}: no tokenizer.json there (byte, bpe, a "
                            f"tokenizer.json file or a model folder holding one)")
        try:
            tok = HFTokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises its own exception type, one per message
            raise DataError(f"{file}: not a tokenizers JSON file ({str(err).splitlines()[0]})") from None
        names = list(END_TOKENS)
        config = file.with_name("tokenizer_config.json")
        if config.is_file():
            eos = json.loads(config.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            names = [eos] if eos else names
        for name in names:
            if (eod := tok.token_to_id(name)) is not None:
                return cls(tok, eod, str(path))
        raise DataError(f"data.tokenizer = {path!r}: no end-of-text token in the vocabulary "
                        f"(looked for {', '.join(names)})")

    @classmethod
    def build(cls, texts=(), vocab_size: int | None = None) -> FileTokenizer:
        raise TypeError("FileTokenizer.build: use FileTokenizer.load(path)")

    def to_dict(self) -> dict:
        return {"kind": "file", "json": self._tok.to_str(), "eod_id": self.eod_id,
                "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> FileTokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        return cls(HFTokenizer.from_str(d["json"]), d["eod_id"], d["source"])


def tokenizer_file(path: str) -> Path | None:
    """The tokenizer.json that `path` names (the file, or one inside the folder), if any."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    return p if p.is_file() and p.suffix == ".json" else None


_KINDS = {"byte": ByteTokenizer, "bpe": BPETokenizer}
KINDS = tuple(_KINDS)


def is_known(kind: str) -> bool:
    """A `data.tokenizer` value: a kind name, or a path to a tokenizer.json (file or folder)."""
    return kind in _KINDS or tokenizer_file(kind) is not None


def _kind(kind: str | None):
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS} or a "
                         f"tokenizer.json path")
    return _KINDS[kind]


def tokenizer_from_dict(d: dict) -> Tokenizer:
    if d.get("kind") == "file":
        return FileTokenizer.from_dict(d)
    return _kind(d.get("kind")).from_dict(d)


def needs_training(kind: str) -> bool:
    return kind in _KINDS and _kind(kind).needs_training


def build_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer of `kind`; one that needs training (BPE) learns it from `texts`; a path
    loads that tokenizer.json."""
    if kind not in _KINDS and tokenizer_file(kind) is not None:
        return FileTokenizer.load(kind)
    return _kind(kind).build(texts, vocab_size)
