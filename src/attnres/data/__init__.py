"""Data: corpora, tokenizers, the token cache and step-addressed batch loading."""

from .corpus import Corpus, DataError, load_documents
from .dataset import BatchLoader, TokenData, check_length, eval_batches, prepare_data
from .tokenizer import BPETokenizer, ByteTokenizer, build_tokenizer, tokenizer_from_dict

__all__ = [
    "DataError",
    "Corpus",
    "load_documents",
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
