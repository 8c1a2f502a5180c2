import os
import threading
import time

import numpy as np
import pytest

from attnres.data import DataError, prepare_data
from attnres.data import cache


def _corpus(root, n=24):
    root.mkdir()
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text("\n".join(f"doc {i} line {j} to be or not" for j in range(20 + i)))
    return root


def _prepare(src, cache_dir, **kw):
    return prepare_data(str(src), val_fraction=0.25, cache_dir=cache_dir, progress=False, **kw)


def _no_build(*args, **kwargs):
    raise AssertionError("cache miss: tokenised again")


def test_reused_when_nothing_changed(tmp_path, monkeypatch):
    src, where = _corpus(tmp_path / "src"), tmp_path / "cache"
    first = _prepare(src, where)
    assert sorted(p.name for p in first.cache_path.iterdir()) == [
        "manifest.json", "tokenizer.json", "train.bin", "val.bin"]
    assert sorted(p.name for p in where.iterdir() if not p.name.endswith(".lock")) == [first.cache_path.name]
    monkeypatch.setattr(cache, "build", _no_build)
    second = _prepare(src, where)
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.val, first.val)


def test_stale_inputs_rebuild(tmp_path):
    src, where = _corpus(tmp_path / "src"), tmp_path / "cache"
    first = _prepare(src, where)
    # Touched, same text: a new entry, the same tokens (so checkpoints still match the data).
    f = src / "doc03.txt"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = _prepare(src, where)
    assert touched.cache_path != first.cache_path and touched.fingerprint == first.fingerprint
    # Edited: new tokens; a new document appears on its side.
    f.write_text("a different text entirely")
    edited = _prepare(src, where)
    assert edited.fingerprint != first.fingerprint
    both = edited.tokenizer.decode(edited.train) + edited.tokenizer.decode(edited.val)
    assert "a different text entirely" in both and "doc 3 line" not in both
    # Other split or tokenizer settings are other entries too.
    assert _prepare(src, where, text_column="body").cache_path != edited.cache_path


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "missing"])
def test_corrupt_entry_is_rebuilt_with_a_warning(damage, tmp_path, capsys):
    src, where = _corpus(tmp_path / "src"), tmp_path / "cache"
    first = _prepare(src, where)
    train = np.asarray(first.train).copy()
    bin_file = first.cache_path / "train.bin"
    del first
    if damage == "truncate":
        with open(bin_file, "r+b") as f:
            f.truncate(bin_file.stat().st_size - 7)
    elif damage == "flip":
        with open(bin_file, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0x01]))
    elif damage == "manifest":
        (bin_file.parent / "manifest.json").write_text("{not json")
    else:
        bin_file.unlink()
    capsys.readouterr()
    again = _prepare(src, where)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "token cache" in err[0] and "rebuilding" in err[0], err
    np.testing.assert_array_equal(again.train, train)


def test_failed_build_leaves_nothing_behind(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("fine")
    (src / "b.txt").write_bytes(b"\xff\xfe bad")
    where = tmp_path / "cache"
    with pytest.raises(DataError, match="b.txt"):
        _prepare(src, where)
    assert [p.name for p in where.iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    src, where = _corpus(tmp_path / "src"), tmp_path / "cache"
    builds = []
    real_build = cache.build

    def slow_build(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.3)  # the second caller arrives while the first is building
        real_build(*args, **kwargs)

    monkeypatch.setattr(cache, "build", slow_build)
    results = [None, None]

    def call(i):
        results[i] = _prepare(src, where)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert results[0].fingerprint == results[1].fingerprint
    assert results[0].cache_path == results[1].cache_path


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_worker_pool_gives_the_same_tokens(kind, tmp_path, monkeypatch):
    src = _corpus(tmp_path / "src", n=40)
    vocab = 320 if kind == "bpe" else None
    one = _prepare(src, tmp_path / "one", workers=1, tokenizer_kind=kind, vocab_size=vocab)
    monkeypatch.setattr(cache, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(cache, "CHUNK_CHARS", 2000)  # many chunks, several in flight
    two = _prepare(src, tmp_path / "two", workers=2, tokenizer_kind=kind, vocab_size=vocab)
    assert two.fingerprint == one.fingerprint
    np.testing.assert_array_equal(two.train, one.train)
    np.testing.assert_array_equal(two.val, one.val)
