"""The train/val split, by whole documents, decided one document at a time as the corpus streams.

A document goes to val when a hash of its id falls below `val_fraction`: the choice depends on
the id alone, so it is the same in every run and on every machine, needs no pass over the corpus
first, and no document is ever on both sides. A corpus that is one plain text file has one
document, so there the file's tail (about `val_fraction` of its bytes, cut at a newline) is val
instead, as before documents were kept whole (docs/DATA.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from .formats import Piece


def is_val(doc_id: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def by_document(pieces: Iterator[Piece], val_fraction: float) -> Iterator[tuple[Piece, bool]]:
    """(piece, goes to val) for each piece."""
    doc, val = None, False
    for piece in pieces:
        if piece.doc != doc:
            doc, val = piece.doc, is_val(piece.doc, val_fraction)
        yield piece, val


def by_tail(pieces: Iterator[Piece], n_bytes: int, val_fraction: float) -> Iterator[tuple[Piece, bool]]:
    """The one document's head to train and its tail to val, cut at the first newline once
    `(1 - val_fraction) * n_bytes` bytes have gone to train; the newline itself is dropped.

    `n_bytes` is the file's size, so the cut lands near the fraction without a first pass.
    With no newline after that point the text is cut at the first piece boundary past it (or,
    in a piece of the end, where the bytes run out: val is then empty and the caller says so).
    """
    budget = n_bytes - round(n_bytes * val_fraction)
    seen, in_val = 0, False
    for piece in pieces:
        if in_val:
            yield Piece(piece.doc + "#tail", piece.text, piece.last), True
            continue
        size = len(piece.text.encode("utf-8"))
        if seen + size <= budget and not piece.last:
            seen += size
            yield piece, False
            continue
        # The cut is in this piece: at the first newline at or after the budget's character.
        at = _char_at_byte(piece.text, max(budget - seen, 0))
        nl = piece.text.find("\n", at)
        if nl == -1 and not piece.last:
            nl = len(piece.text)  # cut between this piece and the next
        if nl == -1:
            yield piece, False
            return
        head, tail = piece.text[:nl], piece.text[nl + 1:]
        yield Piece(piece.doc, head, True), False
        in_val = True
        if tail:
            yield Piece(piece.doc + "#tail", tail, piece.last), True


def _char_at_byte(text: str, n: int) -> int:
    """The index of the character holding UTF-8 byte `n` of `text` (clamped to its length)."""
    return len(text.encode("utf-8")[:n].decode("utf-8", errors="ignore"))
