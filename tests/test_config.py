import pytest

from attnres import config


def test_defaults_and_typed_overrides():
    cfg = config.load(overrides=["train.steps=7", "optim.lr=1e-3", "optim.betas=[0.8, 0.9]",
                                 "train.progress=false", "data.source=my.txt"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.progress is False and cfg.data.source == "my.txt"


def test_toml_and_yaml_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nsteps = 3\n[residual]\nkind = "block"\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("train:\n  steps: 4\nresidual:\n  kind: full\n")
    assert config.load(toml).train.steps == 3
    cfg = config.load(yaml, overrides=["train.steps=9"])
    assert cfg.train.steps == 9 and cfg.residual.kind == "full"


@pytest.mark.parametrize("overrides,message", [
    (["train.stpes=3"], "unknown key 'stpes' (did you mean 'steps'?)"),
    (["trian.steps=3"], "unknown section 'trian'"),
    (["train.steps=three"], "train.steps"),
    (["train.steps=0"], "train.steps must be >= 1"),
    (["residual.kind=skip"], "residual.kind"),
    (["steps=3"], "section.key=value"),
])
def test_bad_keys_and_values_are_one_line_errors(overrides, message):
    with pytest.raises(config.ConfigError) as err:
        config.load(overrides=overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps=")
    with pytest.raises(config.ConfigError, match="bad.toml: cannot parse"):
        config.load(bad)
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")


def test_round_trip_through_dict():
    cfg = config.load(overrides=["residual.kind=block", "residual.block_size=2"])
    assert config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kind,given,stored", [
    ("block", [], 4), ("block", ["residual.block_size=2"], 2), ("full", [], 1),
    ("full", ["residual.block_size=4"], 1), ("prenorm", ["residual.block_size=4"], 0),
    ("block", ["residual.num_blocks=2"], 0)])
def test_block_size_is_stored_as_what_ran(kind, given, stored):
    """block_size means something for Block only: Full stores 1, other kinds 0."""
    cfg = config.load(overrides=[f"residual.kind={kind}", *given])
    assert cfg.residual.block_size == stored
    assert cfg.residual.sublayers_per_block(8) == {"block": 4 if not stored else stored,
                                                   "full": 1, "prenorm": 0}[kind]


@pytest.mark.parametrize("old,kind,block_size", [
    ({"residual": {"kind": "attnres"}, "attnres": {"mode": "full", "block_size": 4}}, "full", 1),
    ({"residual": {"kind": "attnres"}, "attnres": {"mode": "block", "block_size": 2,
                                                   "impl": "reference"}}, "block", 2),
    ({"residual": {"kind": "prenorm"}, "attnres": {"mode": "block", "block_size": 4}}, "prenorm", 0),
])
def test_configs_saved_before_the_one_residual_section_still_load(old, kind, block_size):
    cfg = config.from_dict(old)
    assert (cfg.residual.kind, cfg.residual.block_size) == (kind, block_size)
    if "impl" in old["attnres"]:
        assert cfg.residual.impl == "naive"
