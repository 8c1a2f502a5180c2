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


@pytest.fixture
def plot_colors():
    """A function: PNG path -> how many pixels are (within rounding) each of the given hex
    colours, so a plot test checks what was drawn, not only that a file exists."""
    import matplotlib.image
    import numpy as np

    def count(path, *hex_colors, tol=10 / 255):
        rgb = matplotlib.image.imread(path)[..., :3]
        out = {}
        for h in hex_colors:
            want = np.array([int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)])
            out[h] = int((np.abs(rgb - want).max(axis=-1) <= tol).sum())
        return out

    return count


@pytest.fixture
def drawn_colors():
    """A function: PNG path -> the number of distinct non-grey colours. Axes, ticks and text
    (antialiased black on white) are all grey, so an empty figure has 0; curves in several
    colours or a heat map have hundreds."""
    import matplotlib.image
    import numpy as np

    def count(path):
        rgb = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(np.int16)
        coloured = rgb[(rgb.max(axis=-1) - rgb.min(axis=-1)) > 24]
        return len(np.unique(coloured.reshape(-1, 3), axis=0))

    return count
