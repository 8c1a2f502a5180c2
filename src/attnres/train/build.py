"""From a Config to the objects a run needs: the device and the model."""

from __future__ import annotations

import dataclasses
import warnings

import torch

from attnres import units
from attnres.config import Config, ConfigError, ModelConfig
from attnres.models import dense, kimi_linear

# backbone name -> (config class, model class, presets, ModelConfig keys it accepts)
BACKBONES = {
    "dense": (dense.DenseConfig, dense.DenseLM, dense.PRESETS,
              ("d_model", "n_layers", "max_seq_len", "n_heads", "n_kv_heads", "d_ff")),
    "kimi-linear": (kimi_linear.KimiLinearConfig, kimi_linear.KimiLinearLM, kimi_linear.PRESETS,
                    ("d_model", "n_layers", "max_seq_len", "layer_pattern", "n_experts", "top_k",
                     "first_k_dense", "kda_mode", "bias_update_rate")),
}
_UNSET = (0, "", -1, -1.0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r}: not a device name (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s)")
    elif device.type != "cpu":  # mps, xpu, meta, ...: the trainer is tested on cpu and cuda only
        raise ConfigError(f"device {name!r}: unsupported; use cpu or cuda")
    return device


def residual_name(cfg: Config) -> str:
    """The backbone's residual: prenorm (baseline), full, block, denseformer or mhc."""
    if cfg.residual.kind != "attnres":
        return cfg.residual.kind
    return "full" if cfg.attnres.mode == "full" else "block"


def model_config(cfg: Config, vocab_size: int):
    m = cfg.model
    config_cls, _, presets, keys = BACKBONES[m.backbone]
    if m.preset not in presets:
        raise ConfigError(f"model.preset = {m.preset!r} is not one of {', '.join(presets)} "
                          f"for backbone {m.backbone}")
    shape = dict(presets[m.preset])
    for key in ("d_model", "n_layers", "max_seq_len", "n_heads", "n_kv_heads", "d_ff",
                "layer_pattern", "n_experts", "top_k", "first_k_dense", "kda_mode", "bias_update_rate"):
        value = getattr(m, key)
        if value in _UNSET and not isinstance(value, bool):
            continue
        if key not in keys:
            raise ConfigError(f"model.{key} does not apply to backbone {m.backbone}")
        shape[key] = value
    n_sublayers = units.sublayers_from_layers(shape["n_layers"])
    block_size = cfg.attnres.block_size
    if cfg.attnres.num_blocks > 0:
        block_size = units.block_size_for_num_blocks(n_sublayers, cfg.attnres.num_blocks)
    if cfg.residual.kind == "attnres" and cfg.attnres.mode == "block" \
            and cfg.attnres.num_blocks == 0 and block_size > n_sublayers:
        warnings.warn(f"attnres.block_size = {block_size} is more than the model's {n_sublayers} "
                      f"sublayers: one block, so every read sees only the embedding and the "
                      f"running partial sum", stacklevel=2)
    impl = "naive" if cfg.attnres.impl == "reference" else cfg.attnres.impl
    common = dict(vocab_size=vocab_size, norm_eps=m.norm_eps, init_std=m.init_std,
                  residual=residual_name(cfg), block_size=block_size, attnres_eps=cfg.attnres.eps,
                  attnres_impl=impl, two_phase_group=cfg.attnres.two_phase_group)
    # the read variants (docs/THEORY.md#ablation-variants); other kinds have no depth read
    if cfg.residual.kind == "attnres":
        a = cfg.attnres
        common.update(attnres_query=a.query, attnres_mixing=a.mixing, attnres_kernel=a.kernel,
                      attnres_key_norm=a.key_norm, attnres_window=a.window, attnres_heads=a.heads)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    if "rope_theta" in fields:
        common["rope_theta"] = m.rope_theta
    if "latent_norm_eps" in fields:
        common["latent_norm_eps"] = m.latent_norm_eps
    elif m.latent_norm_eps != ModelConfig.latent_norm_eps:
        raise ConfigError(f"model.latent_norm_eps does not apply to backbone {m.backbone} (no MLA)")
    try:
        return config_cls(**common, **shape)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None


def build_model(cfg: Config, vocab_size: int):
    """Seeded construction: the backbone's weights depend only on train.seed (invariant I13)."""
    mcfg = model_config(cfg, vocab_size)
    torch.manual_seed(cfg.train.seed)
    return BACKBONES[cfg.model.backbone][1](mcfg)


def model_meta(cfg: Config, model) -> dict:
    return {"backbone": cfg.model.backbone, **dataclasses.asdict(model.cfg)}


def model_from_meta(meta_model: dict):
    meta_model = dict(meta_model)
    backbone = meta_model.pop("backbone", "dense")
    config_cls, model_cls, _, _ = BACKBONES[backbone]
    return model_cls(config_cls(**meta_model))
