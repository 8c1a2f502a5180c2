"""`attnres train --set data.source=DIR` on a folder of parquet shards, end to end."""

import json

import pytest

from attnres import cli

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402


def test_train_on_a_folder_of_parquet_shards(tiny_overrides, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(3):
        texts = [f"shard {s} document {i}: " + "the quick brown fox jumps over the lazy dog " * 8
                 for i in range(40)]
        pq.write_table(pa.table({"content": texts}), shards / f"train-{s:05d}.parquet")
    overrides = [o for o in tiny_overrides if not o.startswith("data.source=")]
    args = ["train", "--out", str(tmp_path / "run"), "--set", f"data.source={shards}",
            "--set", "data.text_column=content", "--set", "train.steps=2"]
    for o in overrides:
        args += ["--set", o]
    assert cli.main(args) == 0
    meta = json.loads(next((tmp_path / "tokens").glob("*/manifest.json")).read_text())
    assert meta["train"]["documents"] + meta["val"]["documents"] == 120
    assert meta["vocab_size"] == 257 and meta["eod_id"] == 256

    # The same folder without the column: one line naming a shard and the columns it has.
    capsys.readouterr()
    bad = [a if a != "data.text_column=content" else "data.text_column=text" for a in args]
    assert cli.main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train-00000.parquet" in err and "columns: content" in err
