import gzip
import json
import random

# pyarrow is an install dependency and datasets a dev one (`make test` installs both), so a
# missing one is a failure here, not a skip
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnres.data import DataError, open_source, prepare_data
from attnres.data import formats


def _documents(n=30, seed=0):
    rng = random.Random(seed)
    words = "thou art more lovely and temperate rough winds do shake the darling buds of may çé 日本".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) + f" #{i}" for i in range(n)]


DOCS = _documents()


def _as_text_folder(root):
    root.mkdir()
    for i, text in enumerate(DOCS):
        (root / f"d{i:03d}.txt").write_text(text)
    return root


def _as_jsonl(path, gz=False):
    lines = "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(DOCS))
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines)
    return path


def _as_parquet_shards(root, shards=3):
    root.mkdir()
    for s in range(shards):
        part = DOCS[s::shards]
        pq.write_table(pa.table({"id": list(range(len(part))), "text": part}),
                       root / f"shard-{s:05d}.parquet", row_group_size=4)
    return root


def _as_datasets_folder(root):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))}).save_to_disk(
        str(root), num_shards=2)
    return root


def _per_document_tokens(data):
    """Each document's token ids (between end-of-document ids), train and val together, sorted."""
    out = []
    for tokens in (data.train, data.val):
        ids = np.asarray(tokens)
        ends = np.flatnonzero(ids == data.tokenizer.eod_id)
        out += [tuple(part.tolist()) for part in np.split(ids, ends + 1)[:-1]]
    return sorted(out)


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet", "datasets"])
@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_every_format_gives_the_tokens_of_the_same_text_files(fmt, tokenizer, tmp_path):
    make = {"jsonl": lambda p: _as_jsonl(p / "docs.jsonl"),
            "jsonl.gz": lambda p: _as_jsonl(p / "docs.jsonl.gz", gz=True),
            "parquet": lambda p: _as_parquet_shards(p / "shards"),
            "datasets": lambda p: _as_datasets_folder(p / "saved")}[fmt]
    source = make(tmp_path)
    assert sorted(text for _, text in open_source(str(source)).documents()) == sorted(DOCS)
    kw = dict(val_fraction=0.3, cache_dir=tmp_path / "cache", progress=False)
    vocab = 300 if tokenizer == "bpe" else None
    reference = prepare_data(str(_as_text_folder(tmp_path / "texts")), tokenizer, vocab, **kw)
    data = prepare_data(str(source), tokenizer, vocab, **kw)
    if tokenizer == "bpe":  # merges depend on which documents are train: the ids are its own
        tok = data.tokenizer
        assert sorted(_per_document_tokens(data)) == sorted((*tok.encode(t), tok.eod_id) for t in DOCS)
    else:
        assert _per_document_tokens(data) == _per_document_tokens(reference)
        assert len(data.train) + len(data.val) == len(reference.train) + len(reference.val)


def test_datasets_folder_skips_its_metadata(tmp_path):
    src = open_source(str(_as_datasets_folder(tmp_path / "saved")))
    assert [f.name for f in src.files] == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    assert [text for _, text in src.documents()] == DOCS  # shard order, then row order


def test_text_streams_in_pieces_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "PIECE_CHARS", 64)
    monkeypatch.setattr(formats, "_READ_BYTES", 7)  # cuts characters and "\r\n" between reads
    body = "".join(f"  line {i} çé日本\r\n" + ("x\nyz" + " " * 70 + "\n" if i == 5 else "") for i in range(40))
    f = tmp_path / "a.txt"
    f.write_bytes(("\n \t" + body + "\n  \n").encode("utf-8"))
    pieces = list(formats.read_text(f, "a.txt"))
    assert "".join(p.text for p in pieces) == formats.clean(f.read_bytes().decode("utf-8"))
    assert [p.last for p in pieces] == [False] * (len(pieces) - 1) + [True]
    # lines start with spaces, so no newline is BPE-safe until "x\ny": pieces are cut there,
    # or after the last newline once 4 pieces' worth of text had none
    assert len(pieces) > 3 and all(p.text.endswith("\n") for p in pieces[:-1])
    assert sum(p.text.endswith("x\n") for p in pieces) == 1
    # the same offset a whole-file decode reports, though the bad byte is deep in a later read
    bad = tmp_path / "bad.txt"
    bad.write_bytes("é".encode() * 20 + b"x\xff")
    with pytest.raises(DataError, match="offset 41"):
        list(formats.read_text(bad, "bad.txt"))


def _error(source, *fragments, **kw):
    with pytest.raises(DataError) as info:
        list(open_source(str(source), **kw).pieces())
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_parquet_errors_name_file_columns_and_row(tmp_path):
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), no_text)
    _error(no_text, "no_text.parquet", "no column 'text'", "columns: body, id")
    _error(no_text, "no_text.parquet", "no column 'content'", text_column="content")

    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), nulls)
    _error(nulls, "nulls.parquet", "row 2", "null")

    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), ints)
    _error(ints, "ints.parquet", "'text' holds int64")

    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet at all")
    _error(fake, "fake.parquet", "not a readable parquet file")

    # text_column picks another column
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"content": ["hello"]}), other)
    assert [p.text for p in open_source(str(other), text_column="content").pieces()] == ["hello"]


def test_arrow_errors_name_file_and_row(tmp_path):
    path = tmp_path / "data.arrow"
    table = pa.table({"text": ["a", None]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    _error(path, "data.arrow", "row 1", "null")
    _error(path, "data.arrow", "no column 'body'", "columns: text", text_column="body")
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"\x01\x02 not arrow")
    _error(junk, "junk.arrow", "not a readable Arrow file")


def test_jsonl_gz_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"text": "ok"}\n\n{"text": oops}\n')
    _error(bad, "bad.jsonl.gz:3", "not valid JSON")
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"text": "ok"}\n' * 100)[:30])
    _error(truncated, "cut.jsonl.gz", "gzip")
    not_gz = tmp_path / "plain.jsonl.gz"
    not_gz.write_text('{"text": "ok"}\n')
    _error(not_gz, "plain.jsonl.gz", "gzip")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    _error(latin, "latin.jsonl:2", "UTF-8")
