"""The shipped example configs parse and describe the model they claim."""

from pathlib import Path

import pytest

from attnres import config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.*"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = config.load(path)
    assert cfg.residual.kind == "block" and cfg.residual.block_size == 4
    assert cfg.train.steps >= 1
