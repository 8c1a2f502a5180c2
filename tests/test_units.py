import pytest

from attnres import units


def test_counts_of_the_worked_examples():
    # docs/THEORY.md#units-and-conventions: (L, S) -> N, final sources
    assert units.num_blocks(54, 6) == 9 and units.num_final_sources(54, 6) == 10
    assert units.num_blocks(32, 4) == 8 and units.num_final_sources(32, 4) == 9
    assert units.num_blocks(186, 24) == 8
    assert units.num_blocks(8, 4) == 2 and units.num_final_sources(8, 4) == 3


def test_block_size_for_num_blocks_never_exceeds_n():
    assert units.block_size_for_num_blocks(32, 8) == 4
    for L in (26, 28, 34):
        S = units.block_size_for_num_blocks(L, 8)
        assert units.num_blocks(L, S) == 7  # ceil gives fewer blocks, never more


def test_block_closes_short_last_block():
    assert units.block_closes(8, 3) == [3, 6, 8]
    assert units.block_closes(8, 4) == [4, 8]
    assert units.block_closes(8, 16) == [8]


def test_layer_sublayer_conversion():
    assert units.sublayers_from_layers(27) == 54
    assert units.layers_from_sublayers(54) == 27
    with pytest.raises(ValueError, match="even"):
        units.layers_from_sublayers(7)


@pytest.mark.parametrize("fn,arg,expected", [
    (units.from_fla, None, ("prenorm", None)),
    (units.from_fla, 1, ("full", 1)),
    (units.from_fla, 6, ("block", 6)),
    (units.from_k3, 12, ("block", 24)),
    (units.from_k3, 3, ("block", 6)),
])
def test_converters(fn, arg, expected):
    assert fn(arg) == expected


def test_megatron_gpt_vs_hybrid():
    assert units.from_megatron(3, hybrid=False) == ("block", 6)
    assert units.from_megatron(6, hybrid=True) == ("block", 6)
    assert units.from_megatron(None, hybrid=True) == ("prenorm", None)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_values_raise(bad):
    with pytest.raises(ValueError):
        units.num_blocks(8, bad)
