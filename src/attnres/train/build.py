"""From a Config to the objects a run needs: device, model."""

from __future__ import annotations

from dataclasses import asdict

import torch

from attnres import units
from attnres.config import Config, ConfigError
from attnres.models.dense import PRESETS as DENSE_PRESETS
from attnres.models.dense import DenseConfig, DenseLM


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available on this machine")
    return device


def residual_name(cfg: Config) -> str:
    """The three arms of the comparison: prenorm (baseline), full, block."""
    if cfg.residual.kind == "prenorm":
        return "prenorm"
    return "full" if cfg.attnres.mode == "full" else "block"


def model_config(cfg: Config, vocab_size: int) -> DenseConfig:
    if cfg.model.backbone != "dense":
        raise ConfigError(f"model.backbone = {cfg.model.backbone!r} is not available in this build")
    if cfg.model.preset not in DENSE_PRESETS:
        raise ConfigError(f"model.preset = {cfg.model.preset!r} is not one of {', '.join(DENSE_PRESETS)}")
    shape = dict(DENSE_PRESETS[cfg.model.preset])
    for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
        value = getattr(cfg.model, key)
        if value:
            shape[key] = value
    n_sublayers = units.sublayers_from_layers(shape["n_layers"])
    block_size = cfg.attnres.block_size
    if cfg.attnres.num_blocks > 0:
        block_size = units.block_size_for_num_blocks(n_sublayers, cfg.attnres.num_blocks)
    impl = "naive" if cfg.attnres.impl == "reference" else cfg.attnres.impl
    try:
        return DenseConfig(vocab_size=vocab_size, rope_theta=cfg.model.rope_theta,
                           norm_eps=cfg.model.norm_eps, init_std=cfg.model.init_std,
                           residual=residual_name(cfg), block_size=block_size,
                           attnres_eps=cfg.attnres.eps, attnres_impl=impl,
                           two_phase_group=cfg.attnres.two_phase_group, **shape)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def build_model(cfg: Config, vocab_size: int) -> DenseLM:
    """Seeded construction: the backbone's weights depend only on train.seed (invariant I13)."""
    mcfg = model_config(cfg, vocab_size)
    torch.manual_seed(cfg.train.seed)
    return DenseLM(mcfg)


def model_from_meta(meta_model: dict) -> DenseLM:
    return DenseLM(DenseConfig(**meta_model))


def describe(model: DenseLM) -> dict:
    return asdict(model.cfg)
