"""File formats, read one document at a time: text, JSON lines (optionally gzipped), parquet and
the Arrow files of a Hugging Face `datasets` folder (`save_to_disk`).

Every reader is a generator of `Piece`s, so a corpus of any size streams through in bounded
memory: a row or line is one piece, and a text file is cut into newline-aligned pieces of about
`PIECE_CHARS` characters, the last flagged as the end of its document. `advance(n)` is called
with the on-disk bytes consumed, for the progress bar. Nothing in a file is ever executed: JSON
and Arrow are data-only formats. Bad input raises a `DataError` naming the file and line or row.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PIECE_CHARS = 1 << 20  # ~1 MiB of text: large enough to tokenise efficiently, small to hold
_READ_BYTES = 1 << 20
_BINARY_SNIFF_BYTES = 8 * 1024
_ROWS_PER_BATCH = 1024  # parquet / Arrow rows decoded at a time


class DataError(ValueError):
    """A corpus or token split that cannot be used; the message names the file at fault."""


@dataclass(frozen=True)
class Piece:
    doc: str    # document id, stable across runs (it decides the train/val side)
    text: str
    last: bool  # the document's final piece: an end-of-document token follows it


Advance = Callable[[int], None]


def _noop(n: int) -> None:
    pass


def kind_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".arrow"):
        return "arrow"
    return "text"


def read(path: Path, doc_id: str, text_column: str = "text", advance: Advance = _noop) -> Iterator[Piece]:
    kind = kind_of(path)
    if kind == "jsonl":
        return read_jsonl(path, doc_id, text_column, advance)
    if kind == "parquet":
        return read_parquet(path, doc_id, text_column, advance)
    if kind == "arrow":
        return read_arrow(path, doc_id, text_column, advance)
    return read_text(path, doc_id, advance)


_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def cut_point(text: str, limit: int) -> int | None:
    """Where to cut `text` near `limit` without changing how BPE tokenises it, or None if no
    such point is in `text` yet (more text may bring one).

    A safe point is after a newline between two non-space characters ("x\nW"): GPT-2-style
    pre-tokenisation splits there anyway, while a newline next to other whitespace may be
    grouped with it. The last safe point up to `limit` is taken, else the first after it; a
    text with none in `4 * limit` characters is cut after its last newline there, or at that
    length: the one place tokens may differ from the uncut text's.
    """
    if len(text) <= limit:
        return None
    best = None
    for m in _SAFE_CUT.finditer(text, 0, limit):
        best = m.end()
    if best is not None:
        return best
    hard = 4 * limit
    m = _SAFE_CUT.search(text, limit, hard)
    if m is not None:
        return m.end()
    if len(text) < hard:
        return None
    return (text.rfind("\n", 0, hard) + 1) or hard


def clean(text: str) -> str:
    """Documents are compared and split as stripped text with Unix line endings."""
    return text.replace("\r\n", "\n").strip()


# --- plain text --------------------------------------------------------------------------------

def read_text(path: Path, doc_id: str, advance: Advance = _noop) -> Iterator[Piece]:
    """One document per file, streamed in pieces; the same text `clean` would give, exactly."""
    return _pieces(doc_id, _decoded_blocks(path, advance))


def _decoded_blocks(path: Path, advance: Advance) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file handed to the decoder so far
    held_cr = ""  # a "\r" at a block's end may pair with a "\n" opening the next
    with open(path, "rb") as f:
        while True:
            raw = f.read(_READ_BYTES)
            if offset == 0 and b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
                raise DataError(f"{path}: looks binary (NUL byte in the first 8 KiB), expected UTF-8 text")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not valid UTF-8 at byte offset {offset - pending + e.start}") from None
            offset += len(raw)
            advance(len(raw))
            text = held_cr + text
            held_cr = ""
            if raw and text.endswith("\r"):
                text, held_cr = text[:-1], "\r"
            if text:
                yield text.replace("\r\n", "\n")
            if not raw:
                return


def _pieces(doc_id: str, blocks: Iterator[str]) -> Iterator[Piece]:
    """Newline-aligned pieces of the stripped text of `blocks`.

    A piece is held back until text that is not whitespace follows it, so the document's end
    is stripped without reading the file twice; pieces end where `cut_point` says, so BPE gives
    the tokens of the whole text.
    """
    buf, started, held = "", False, None
    for block in blocks:
        if not started:
            block = block.lstrip()
            if not block:
                continue
            started = True
        buf += block
        while (cut := cut_point(buf, PIECE_CHARS)) is not None:
            piece, buf = buf[:cut], buf[cut:]
            if held is None:
                held = piece
            elif piece.strip():
                yield Piece(doc_id, held, False)
                held = piece
            else:
                held += piece
    if buf.strip():
        if held is not None:
            yield Piece(doc_id, held, False)
        yield Piece(doc_id, buf.rstrip(), True)
    elif held is not None:
        yield Piece(doc_id, (held + buf).rstrip(), True)


# --- JSON lines --------------------------------------------------------------------------------

def read_jsonl(path: Path, doc_id: str, text_column: str = "text", advance: Advance = _noop) -> Iterator[Piece]:
    """One document per line: a JSON object whose `text_column` field is a string."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                advance(len(raw))  # gzip: uncompressed bytes; the bar's total is then an estimate
                if lineno == 1 and b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
                    raise DataError(f"{path}: looks binary (NUL byte on line 1), expected JSON lines")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid UTF-8 at column {e.start + 1}") from None
                if not line.strip():
                    continue  # a trailing newline or a spacer line is not a document
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
                    raise DataError(f'{path}:{lineno}: expected a JSON object with a string "{text_column}" field')
                text = clean(record[text_column])
                if text:
                    yield Piece(f"{doc_id}:{lineno}", text, True)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({_first_line(e)})") from None


# --- parquet and Arrow (HF datasets) -----------------------------------------------------------

def _pyarrow(path: Path):
    try:
        import pyarrow as pa
    except ImportError:
        raise DataError(f"{path}: reading parquet / Arrow needs pyarrow: pip install pyarrow") from None
    return pa


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _check_column(path: Path, schema, text_column: str):
    pa = _pyarrow(path)
    if text_column not in schema.names:
        raise DataError(f"{path}: no column {text_column!r} (columns: {', '.join(schema.names)}); "
                        f"set data.text_column")
    kind = schema.field(text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column {text_column!r} holds {kind}, expected strings")


def _rows(path: Path, doc_id: str, text_column: str, batches, column: int,
          bytes_done: Callable[[int], int], advance: Advance) -> Iterator[Piece]:
    row, reported = 0, 0
    for batch in batches:
        for value in batch.column(column).to_pylist():
            if value is None:
                raise DataError(f"{path}: row {row}: {text_column!r} is null, expected a string")
            text = clean(value)
            if text:
                yield Piece(f"{doc_id}:{row}", text, True)
            row += 1
        done = bytes_done(row)
        advance(done - reported)
        reported = done
    advance(path.stat().st_size - reported)


def read_parquet(path: Path, doc_id: str, text_column: str = "text", advance: Advance = _noop) -> Iterator[Piece]:
    """One document per row of `text_column`, read a batch of rows at a time (row 0 first)."""
    pa = _pyarrow(path)
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({_first_line(e)})") from None
    _check_column(path, pf.schema_arrow, text_column)
    batches = pf.iter_batches(batch_size=_ROWS_PER_BATCH, columns=[text_column])
    n_rows, n_bytes = pf.metadata.num_rows, path.stat().st_size
    try:
        yield from _rows(path, doc_id, text_column, batches, 0,
                         lambda row: n_bytes * row // max(n_rows, 1), advance)
    except pa.ArrowException as e:
        raise DataError(f"{path}: corrupt parquet data ({_first_line(e)})") from None


def read_arrow(path: Path, doc_id: str, text_column: str = "text", advance: Advance = _noop) -> Iterator[Piece]:
    """One document per row of an Arrow IPC stream (what `datasets` writes) or IPC file.

    The file is memory-mapped, so a record batch costs page cache, not process memory.
    """
    pa = _pyarrow(path)
    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_stream(source)
            batches = iter(reader)
            schema = reader.schema
        except pa.ArrowInvalid:
            table_reader = pa.ipc.open_file(source)
            schema = table_reader.schema
            batches = (table_reader.get_batch(i) for i in range(table_reader.num_record_batches))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Arrow file ({_first_line(e)})") from None
    _check_column(path, schema, text_column)
    # Row counts of a stream are only known at its end; progress goes by bytes mapped instead.
    n_bytes = path.stat().st_size
    try:
        yield from _rows(path, doc_id, text_column, batches, schema.get_field_index(text_column),
                         lambda row: min(n_bytes, source.tell()), advance)
    except pa.ArrowException as e:
        raise DataError(f"{path}: corrupt Arrow data ({_first_line(e)})") from None
