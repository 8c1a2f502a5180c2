"""Depth units and the conversions between the conventions users meet
(docs/THEORY.md#units-and-conventions).

Our unit is the *sublayer* (one mixer or one FFN, with its PreNorm): L = 2·n_layers. The block
size S counts sublayers. Other code bases count decoder layers; these helpers translate, and every
convention counts the embedding as a source, so nothing here adds it again.
"""

from __future__ import annotations

import math


def sublayers_from_layers(n_layers: int) -> int:
    return 2 * n_layers


def layers_from_sublayers(n_sublayers: int) -> int:
    if n_sublayers % 2:
        raise ValueError(f"{n_sublayers} sublayers is not a whole number of layers (it must be even)")
    return n_sublayers // 2


def num_blocks(n_sublayers: int, block_size: int) -> int:
    _check_positive(block_size=block_size, n_sublayers=n_sublayers)
    return math.ceil(n_sublayers / block_size)


def num_final_sources(n_sublayers: int, block_size: int) -> int:
    """Sources of the read before the final norm: the embedding plus every block."""
    return num_blocks(n_sublayers, block_size) + 1


def block_size_for_num_blocks(n_sublayers: int, n_blocks: int) -> int:
    """S = ceil(L / N): never more than N blocks (it can give fewer, e.g. N = 8 at L = 26 gives 7)."""
    _check_positive(n_blocks=n_blocks, n_sublayers=n_sublayers)
    return math.ceil(n_sublayers / n_blocks)


def block_closes(n_sublayers: int, block_size: int) -> list[int]:
    """1-based sublayer indices after which a block closes (the last block may be shorter)."""
    _check_positive(block_size=block_size, n_sublayers=n_sublayers)
    closes = list(range(block_size, n_sublayers + 1, block_size))
    if not closes or closes[-1] != n_sublayers:
        closes.append(n_sublayers)
    return closes


# --- conversions from other code bases' keys to ours: (mode, block_size in sublayers) ---------

def from_fla(attnres_block_size: int | None) -> tuple[str, int | None]:
    """FLA's `attnres_block_size` already counts sublayers (even, or 1 for Full); None = off."""
    if attnres_block_size is None:
        return ("prenorm", None)
    _check_positive(attnres_block_size=attnres_block_size)
    return _mode_for(attnres_block_size)


def from_megatron(attn_res_block_layers: int | None, hybrid: bool) -> tuple[str, int | None]:
    """Megatron's `attn_res_block_layers` counts decoder layers in GPT stacks (S = 2k) and
    pattern entries, i.e. sublayers, in hybrid stacks (S = k)."""
    if attn_res_block_layers is None:
        return ("prenorm", None)
    _check_positive(attn_res_block_layers=attn_res_block_layers)
    return _mode_for(attn_res_block_layers if hybrid else 2 * attn_res_block_layers)


def from_k3(attn_res_block_size: int | None) -> tuple[str, int | None]:
    """Kimi K3's HF config counts decoder layers per block: S = 2k."""
    if attn_res_block_size is None:
        return ("prenorm", None)
    _check_positive(attn_res_block_size=attn_res_block_size)
    return _mode_for(2 * attn_res_block_size)


def _mode_for(block_size: int) -> tuple[str, int]:
    return ("full", 1) if block_size == 1 else ("block", block_size)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
