import random

import pytest


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """A small deterministic text file (about 40 KB) for end-to-end runs."""
    rng = random.Random(0)
    words = ("the king and queen of denmark speak to their court about love death honour "
             "and the ghost that walks upon the platform at night").split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(800)]
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def run_overrides(text_corpus, tmp_path):
    """Config overrides for a short, quiet CPU run on the test corpus (any model)."""
    return [f"data.source={text_corpus}", f"data.cache_dir={tmp_path / 'tokens'}",
            "train.seq_len=32", "train.batch_size=4", "train.eval_batches=2",
            "train.eval_every=1000", "train.log_every=1", "train.progress=false",
            "train.tensorboard=false", "train.analysis=false", "train.device=cpu"]


@pytest.fixture
def tiny_overrides(run_overrides):
    """Config overrides for a run that takes about a second."""
    return run_overrides + ["model.preset=tiny", "model.n_layers=2", "model.d_model=32",
                            "model.d_ff=64", "model.n_heads=2", "model.n_kv_heads=1"]
