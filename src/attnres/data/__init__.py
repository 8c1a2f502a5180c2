"""Data: corpora, tokenizers, the token cache and step-addressed batch loading (docs/DATA.md)."""

from .corpus import Corpus, Source, load_documents, open_source
from .dataset import BatchLoader, TokenData, check_length, eval_batches, prepare_data
from .formats import DataError
from .tokenizer import BPETokenizer, ByteTokenizer, build_tokenizer, tokenizer_from_dict

__all__ = [
    "DataError",
    "Corpus",
    "Source",
    "load_documents",
    "open_source",
    "ByteTokenizer",
    "BPETokenizer",
    "build_tokenizer",
    "tokenizer_from_dict",
    "TokenData",
    "prepare_data",
    "check_length",
    "BatchLoader",
    "eval_batches",
]
