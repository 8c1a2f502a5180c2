"""Conversion between transformers Llama / Qwen3 / Kimi-Linear checkpoints and attnres models.

In: `from_hf(path_or_model, residual=...)` maps the source's config onto `DenseConfig` (or
`KimiLinearConfig`), builds the attnres model with the chosen residual, and copies every source
tensor into it by name (`NAMES`, `KIMI_NAMES`, `KIMI_SPLITS`; docs/HF.md#name-mapping), one
safetensors shard at a time. The AttnRes reads keep
their zero queries, so a Full or Block model starts with the source's logits
(docs/DESIGN.md#exact-drop-in-at-step-0). A config feature the backbone lacks is refused with
one line naming it (`ConversionError`).

Out: `to_hf(model, out)` writes a prenorm model as a plain transformers Llama (or Qwen3, with
q/k norms, or Kimi-Linear) folder that loads without attnres; any other residual is saved as
the attnres model type.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from attnres.config import ConfigError, ResidualConfig
from attnres.hf.configuration import AttnResKimiLinearConfig, AttnResLlamaConfig
from attnres.hf.modeling import (AttnResKimiLinearForCausalLM, AttnResLlamaForCausalLM,
                                 AttnResPreTrainedModel)

SOURCES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "kimi_linear": "KimiLinearForCausalLM"}
# files of a source folder that travel with its weights (tokenizer, generation defaults)
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model",
              "chat_template.jinja")

# transformers name -> attnres (DenseLM) name; {i} is the layer index
NAMES = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    **{f"model.layers.{{i}}.self_attn.{p}_proj.{t}": f"layers.{{i}}.self_attn.{p}_proj.{t}"
       for p in "qkvo" for t in ("weight", "bias")},
    "model.layers.{i}.self_attn.q_norm.weight": "layers.{i}.self_attn.q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "layers.{i}.self_attn.k_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.mlp.w1.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.mlp.w3.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.mlp.w2.weight",
}
# Kimi-Linear as saved on disk (the released checkpoint layout, which transformers also writes):
# separate q/k/v short convolutions, and routed experts one tensor each, `{e}` the expert index
_KIMI_COMMON = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    **{f"model.layers.{{i}}.self_attn.{n}.weight": f"layers.{{i}}.self_attn.{n}.weight"
       for n in ("q_proj", "k_proj", "v_proj", "b_proj", "g_a_proj", "g_b_proj", "o_norm",
                 "o_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj")},
}
KIMI_FILE_NAMES = {
    **_KIMI_COMMON,
    **{f"model.layers.{{i}}.self_attn.{n}.weight": f"layers.{{i}}.self_attn.{n}.weight"
       for n in ("f_a_proj", "f_b_proj")},
    **{f"model.layers.{{i}}.self_attn.{p}_conv1d.weight": f"layers.{{i}}.self_attn.{p}_conv.weight"
       for p in "qkv"},
    "model.layers.{i}.self_attn.dt_bias": "layers.{i}.self_attn.dt_bias",
    "model.layers.{i}.self_attn.A_log": "layers.{i}.self_attn.A_log",        # [1,1,H,1] -> [H]
    "model.layers.{i}.block_sparse_moe.gate_proj.weight": "layers.{i}.mlp.w1.weight",  # dense FFN
    "model.layers.{i}.block_sparse_moe.up_proj.weight": "layers.{i}.mlp.w3.weight",
    "model.layers.{i}.block_sparse_moe.down_proj.weight": "layers.{i}.mlp.w2.weight",
    "model.layers.{i}.block_sparse_moe.gate.weight": "layers.{i}.mlp.gate.weight",
    # the router's selection bias is our `bias` buffer (aux-loss-free balancing)
    "model.layers.{i}.block_sparse_moe.gate.e_score_correction_bias": "layers.{i}.mlp.bias",
    **{f"model.layers.{{i}}.block_sparse_moe.shared_experts.{h}_proj.weight":
       f"layers.{{i}}.mlp.shared.{w}.weight" for h, w in (("gate", "w1"), ("up", "w3"), ("down", "w2"))},
    # routed expert e: row e of our stacked [E, ...] tensors
    **{f"model.layers.{{i}}.block_sparse_moe.experts.{{e}}.{w}.weight": f"layers.{{i}}.mlp.{w}"
       for w in ("w1", "w2", "w3")},
}
# ... and as a loaded KimiLinearForCausalLM holds it (`from_hf(model)`): fused q/k/v convolution
# and per-expert [gate; up] rows, split into ours along (dim, parts)
KIMI_MODULE_NAMES = {
    **_KIMI_COMMON,
    **{f"model.layers.{{i}}.self_attn.forget_gate.{n}": f"layers.{{i}}.self_attn.{n}"
       for n in ("f_a_proj.weight", "f_b_proj.weight", "dt_bias", "A_log")},
    **{f"model.layers.{{i}}.mlp.{h}_proj.weight": f"layers.{{i}}.mlp.{w}.weight"
       for h, w in (("gate", "w1"), ("up", "w3"), ("down", "w2"))},
    "model.layers.{i}.mlp.gate.weight": "layers.{i}.mlp.gate.weight",
    "model.layers.{i}.mlp.gate.e_score_correction_bias": "layers.{i}.mlp.bias",
    **{f"model.layers.{{i}}.mlp.shared_experts.{h}_proj.weight": f"layers.{{i}}.mlp.shared.{w}.weight"
       for h, w in (("gate", "w1"), ("up", "w3"), ("down", "w2"))},
    "model.layers.{i}.mlp.experts.down_proj": "layers.{i}.mlp.w2",
}
KIMI_SPLITS = {
    "model.layers.{i}.self_attn.conv1d.weight": (0, ("layers.{i}.self_attn.q_conv.weight",
                                                     "layers.{i}.self_attn.k_conv.weight",
                                                     "layers.{i}.self_attn.v_conv.weight")),
    "model.layers.{i}.mlp.experts.gate_up_proj": (1, ("layers.{i}.mlp.w1", "layers.{i}.mlp.w3")),
}
_EXPERT = re.compile(r"\.experts\.(\d+)\.")
_LAYER = re.compile(r"\.(\d+)\.")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")  # recomputed, never learned


class ConversionError(ConfigError):
    """A checkpoint the conversion cannot map; the message is one line (the CLI prints it and
    exits with status 2, as for any ConfigError)."""


def _template(name: str) -> tuple[str, str | None]:
    m = _LAYER.search(name)
    return (name[:m.start()] + ".{i}." + name[m.end():], m.group(1)) if m else (name, None)


def _fill(template: str, layer: str | None) -> str:
    return template.replace("{i}", layer) if layer is not None else template


def _rename(name: str, table: dict[str, str]) -> str | None:
    key, layer = _template(name)
    target = table.get(key)
    return None if target is None else _fill(target, layer)


def attnres_name(hf_name: str) -> str | None:
    return _rename(hf_name, NAMES)


def hf_name(attnres_name: str) -> str | None:
    return _rename(attnres_name, {v: k for k, v in NAMES.items()})


def dense_targets(name: str, tensor: torch.Tensor):
    """[(attnres name, None, tensor)] of a Llama / Qwen3 tensor, or None if it has no place."""
    target = attnres_name(name)
    return None if target is None else [(target, None, tensor)]


def kimi_targets(name: str, tensor: torch.Tensor):
    """[(attnres name, expert row or None, tensor)] of a Kimi-Linear tensor, or None."""
    expert = None
    if m := _EXPERT.search(name):
        expert, name = int(m.group(1)), name[:m.start()] + ".experts.{e}." + name[m.end():]
    key, layer = _template(name)
    if key in KIMI_SPLITS:
        dim, parts = KIMI_SPLITS[key]
        return [(_fill(p, layer), None, t) for p, t in zip(parts, tensor.chunk(len(parts), dim=dim))]
    target = KIMI_FILE_NAMES.get(key) or KIMI_MODULE_NAMES.get(key)
    return None if target is None else [(_fill(target, layer), expert, tensor)]


# --- config ---------------------------------------------------------------------------------

def _read_config_json(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise ConversionError(f"{path}: no config.json (expected a transformers model folder)")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{file}: not JSON ({err})") from None


def is_transformers_folder(path: str | Path) -> bool:
    """A folder with a transformers config.json (an attnres run folder has a config.json too,
    without a model_type)."""
    file = Path(path) / "config.json"
    try:
        return file.is_file() and "model_type" in json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError):
        return False


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _check_model_type(model_type: str | None, where: str) -> None:
    if model_type not in SOURCES:
        raise ConversionError(
            f"{where}: model type {model_type!r} cannot be converted; supported: "
            f"{', '.join(SOURCES)} ({', '.join(SOURCES.values())})")


def dense_fields(hf_config) -> dict:
    """The `AttnResLlamaConfig` fields of a transformers Llama / Qwen3 config; raises
    ConversionError naming every feature the dense backbone does not have."""
    c, missing = hf_config, []
    rope = dict(getattr(c, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", "llama3"):
        missing.append(f"rope type {rope_type!r} (have: default, llama3)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        missing.append("partial_rotary_factor != 1")
    if getattr(c, "hidden_act", "silu") != "silu":
        missing.append(f"hidden_act {c.hidden_act!r} (have: silu)")
    if getattr(c, "mlp_bias", False):
        missing.append("mlp_bias")
    if getattr(c, "use_sliding_window", False):
        missing.append("sliding-window attention")
    if any(t != "full_attention" for t in (getattr(c, "layer_types", None) or [])):
        missing.append("layer types other than full_attention")
    if missing:
        raise ConversionError(f"{c.model_type}: cannot convert, the dense backbone lacks "
                              f"{'; '.join(missing)}")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    llama3 = None
    if rope_type == "llama3":
        llama3 = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings")}
    return dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads or c.num_attention_heads,
        head_dim=0 if head_dim * c.num_attention_heads == c.hidden_size else head_dim,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_theta=float(rope.get("rope_theta", 10000.0)), rope_scaling_llama3=llama3,
        attention_bias=bool(getattr(c, "attention_bias", False)),
        qk_norm=c.model_type == "qwen3",
        initializer_range=getattr(c, "initializer_range", 0.02),
        tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=getattr(c, "pad_token_id", None), source_model_type=c.model_type)


def kimi_config(c, residual: ResidualConfig, max_position_embeddings: int | None = None):
    """Our `KimiLinearConfig` of a transformers KimiLinearConfig; raises ConversionError naming
    every feature the kimi-linear backbone does not have."""
    from attnres.models.kimi_linear import KimiLinearConfig
    missing = []
    if c.q_lora_rank is not None:
        missing.append("q_lora_rank (MLA queries through a low-rank projection)")
    if c.attention_bias:
        missing.append("attention_bias")
    if c.n_group != 1 or c.topk_group != 1:
        missing.append("grouped expert routing (n_group / topk_group != 1)")
    if not c.norm_topk_prob:
        missing.append("unnormalised top-k weights (norm_topk_prob = False)")
    if c.hidden_act != "silu":
        missing.append(f"hidden_act {c.hidden_act!r} (have: silu)")
    if c.num_experts_per_tok < 2:
        missing.append("top-1 routing (num_experts_per_tok < 2)")
    kinds = {"full_attention": "M", "linear_attention": "K"}
    if set(c.layer_types) - set(kinds):
        missing.append(f"layer types {sorted(set(c.layer_types) - set(kinds))}")
    n_dense = next((j for j, t in enumerate(c.mlp_layer_types) if t != "dense"),
                   len(c.mlp_layer_types))
    if any(t != "sparse" for t in c.mlp_layer_types[n_dense:]):
        missing.append("dense FFN layers after the first MoE layer")
    if missing:
        raise ConversionError(f"kimi_linear: cannot convert, the kimi-linear backbone lacks "
                              f"{'; '.join(missing)}")
    return KimiLinearConfig(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
        max_seq_len=max_position_embeddings or c.max_position_embeddings,
        norm_eps=c.rms_norm_eps, init_std=c.initializer_range,
        tie_embeddings=bool(c.tie_word_embeddings), residual=residual,
        layer_pattern="".join(kinds[t] for t in c.layer_types),
        kda_heads=c.linear_num_heads, kda_head_dim=c.linear_head_dim,
        conv_size=c.linear_conv_kernel_dim, gate_rank=c.linear_head_dim,
        mla_heads=c.num_attention_heads, d_nope=c.qk_nope_head_dim, d_rope=c.qk_rope_head_dim,
        d_v=c.v_head_dim, kv_lora_rank=c.kv_lora_rank,
        latent_norm_eps=1e-6,  # transformers' kv_a_layernorm keeps its default ε
        n_experts=c.num_local_experts, top_k=c.num_experts_per_tok,
        n_shared=c.n_shared_experts, d_expert=c.moe_intermediate_size,
        dense_width=c.intermediate_size, first_k_dense=n_dense,
        routed_scale=c.routed_scaling_factor)


def _residual(residual: str | ResidualConfig, block_size: int | None) -> ResidualConfig:
    if isinstance(residual, ResidualConfig):
        return residual
    if residual not in ("prenorm", "full", "block"):
        raise ConversionError(f"residual {residual!r}: convert takes prenorm, full or block")
    if block_size is not None and residual != "block":
        raise ConversionError(f"--block-size applies to --residual block, not {residual}")
    return ResidualConfig(residual, block_size=block_size or 0)


# --- weights --------------------------------------------------------------------------------

def _source_tensors(path: Path):
    """(name, tensor) of every tensor in the folder's safetensors files, one shard open at a
    time (a sharded checkpoint lists its shards in model.safetensors.index.json)."""
    from safetensors import safe_open
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise ConversionError(f"{path}: no model.safetensors or model.safetensors.index.json "
                              f"(only safetensors weights are read)")
    from safetensors import SafetensorError
    for shard in shards:
        try:
            f = safe_open(str(path / shard), framework="pt")
        except (SafetensorError, OSError) as err:
            raise ConversionError(f"{path / shard}: unreadable ({_first_line(err)})") from None
        with f:
            for name in f.keys():
                yield name, f.get_tensor(name)


@torch.no_grad()
def load_source_weights(model: AttnResPreTrainedModel, tensors, where: str,
                        targets=dense_targets) -> None:
    """Copy (transformers name, tensor) pairs into the model through `targets`; every backbone
    tensor (parameters and saved buffers; a stacked expert tensor row by row or whole) must be
    filled and every source tensor used. Kimi's A_log [1, 1, H, 1] is reshaped to [H]."""
    own = model.model.state_dict(keep_vars=True)  # a tied head included, and saved buffers
    filled = set()
    for name, tensor in tensors:
        if _IGNORED.search(name):
            continue
        pairs = targets(name, tensor)
        if pairs is None or any(t not in own for t, _, _ in pairs):
            raise ConversionError(f"{where}: tensor {name!r} has no place in the attnres model")
        for target, row, part in pairs:
            dest = own[target] if row is None else own[target][row]
            if tuple(part.shape) != tuple(dest.shape):
                if part.numel() != dest.numel() or not target.endswith("A_log"):
                    raise ConversionError(f"{where}: {name} has shape {tuple(part.shape)}, the "
                                          f"attnres model expects {tuple(dest.shape)} for {target}")
                part = part.reshape(dest.shape)
            dest.copy_(part)
            filled.add(target if row is None else (target, row))
    backbone = {n for n in own if ".res_" not in n and not n.startswith("final_res")}
    if model.config.tie_word_embeddings:
        backbone.discard("lm_head.weight")  # the embedding's tensor; saved folders omit it
    missing = sorted(n for n in backbone if n not in filled and not (
        own[n].dim() == 3 and all((n, e) in filled for e in range(own[n].shape[0]))))
    if missing:
        raise ConversionError(f"{where}: the checkpoint lacks {len(missing)} tensor(s), e.g. "
                              f"{hf_name(missing[0]) or missing[0]}")


def from_hf(path_or_model, residual: str | ResidualConfig = "prenorm",
            block_size: int | None = None, dtype: torch.dtype = torch.float32,
            max_position_embeddings: int | None = None) -> AttnResPreTrainedModel:
    """A transformers Llama / Qwen3 / Kimi-Linear model (a local folder, or a loaded
    `PreTrainedModel`) as an `AttnResLlamaForCausalLM` / `AttnResKimiLinearForCausalLM` with
    `residual` (prenorm | full | block, or a ResidualConfig), in eval mode."""
    residual = _residual(residual, block_size)
    if isinstance(path_or_model, (str, Path)):
        path = Path(path_or_model)
        _check_model_type(_read_config_json(path).get("model_type"), str(path))
        from transformers import AutoConfig
        try:
            hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
        except (ValueError, TypeError, OSError) as err:
            raise ConversionError(f"{path}/config.json: {_first_line(err)}") from None
        tensors, where = _source_tensors(path), str(path)
    else:
        hf_config = path_or_model.config
        _check_model_type(hf_config.model_type, type(path_or_model).__name__)
        tensors, where = path_or_model.state_dict().items(), type(path_or_model).__name__
    if hf_config.model_type == "kimi_linear":
        config = AttnResKimiLinearConfig.from_model_config(
            kimi_config(hf_config, residual, max_position_embeddings),
            source_model_type="kimi_linear", bos_token_id=hf_config.bos_token_id,
            eos_token_id=hf_config.eos_token_id, pad_token_id=hf_config.pad_token_id)
        model, targets = AttnResKimiLinearForCausalLM(config), kimi_targets
    else:
        fields = dense_fields(hf_config)
        if max_position_embeddings:
            fields["max_position_embeddings"] = max_position_embeddings
        config = AttnResLlamaConfig(**fields, residual=_residual_dict(residual))
        model, targets = AttnResLlamaForCausalLM(config), dense_targets
    load_source_weights(model, tensors, where, targets)
    return model.to(dtype).eval()


def _residual_dict(r: ResidualConfig) -> dict:
    import dataclasses
    return dataclasses.asdict(r)


def copy_side_files(src: Path, out: Path) -> list[str]:
    """Tokenizer and generation files of `src` that are not there yet in `out`."""
    copied = []
    for name in SIDE_FILES:
        if (src / name).is_file() and not (out / name).exists():
            shutil.copy2(src / name, out / name)
            copied.append(name)
    return copied


# --- out ------------------------------------------------------------------------------------

def to_hf_model(model: AttnResPreTrainedModel):
    """A prenorm attnres model as the transformers model it came from (Qwen3 when it has q/k
    norms, else Llama; Kimi-Linear for the kimi-linear backbone), with the same weights."""
    c = model.config
    if (c.residual or {}).get("kind", "prenorm") != "prenorm":
        raise ConversionError(f"residual {c.residual['kind']!r}: only a prenorm model is a plain "
                              f"transformers model; save an AttnRes model as {c.model_type}")
    if isinstance(model, AttnResKimiLinearForCausalLM):
        return _to_kimi_linear(model)
    from transformers import AutoConfig, AutoModelForCausalLM
    model_type = "qwen3" if c.qk_norm else "llama"
    if model_type == "qwen3" and c.rope_scaling_llama3:
        raise ConversionError("a model with q/k norms and Llama 3 RoPE scaling has no "
                              "transformers class")
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling_llama3:
        rope = {**rope, "rope_type": "llama3", **c.rope_scaling_llama3}
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    hf_config = AutoConfig.for_model(
        model_type, vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
        head_dim=head_dim, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_parameters=rope, attention_bias=c.attention_bias,
        tie_word_embeddings=c.tie_word_embeddings, initializer_range=c.initializer_range,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id)
    out = AutoModelForCausalLM.from_config(hf_config).to(model.dtype)
    state = {hf_name(n): t for n, t in model.model.state_dict().items()}
    if c.tie_word_embeddings:
        state.pop("lm_head.weight")
    result = out.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys]
    missing = [k for k in result.missing_keys if not (c.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ConversionError(f"export: names do not match (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]})")
    return out.eval()


ATTNRES_TYPES = {AttnResLlamaConfig.model_type: AttnResLlamaForCausalLM,
                 AttnResKimiLinearConfig.model_type: AttnResKimiLinearForCausalLM}


def load_attnres(path: str | Path) -> AttnResPreTrainedModel:
    """An attnres_llama / attnres_kimi_linear folder (what `attnres convert --from-hf` and
    `save_pretrained` write)."""
    path = Path(path)
    model_type = _read_config_json(path).get("model_type")
    if model_type not in ATTNRES_TYPES:
        raise ConversionError(f"{path}: model type {model_type!r}, not one of "
                              f"{', '.join(ATTNRES_TYPES)}")
    return ATTNRES_TYPES[model_type].from_pretrained(path).eval()


def wrap(backbone) -> AttnResPreTrainedModel:
    """A `DenseLM` / `KimiLinearLM` (e.g. from an attnres training checkpoint) as its
    transformers class, with the same weights."""
    from attnres.models.kimi_linear import KimiLinearLM
    if isinstance(backbone, KimiLinearLM):
        model = AttnResKimiLinearForCausalLM(AttnResKimiLinearConfig.from_model_config(backbone.cfg))
    else:
        model = AttnResLlamaForCausalLM(AttnResLlamaConfig.from_dense_config(backbone.cfg))
    model.model.load_state_dict(backbone.state_dict())
    return model.eval()


def init_model(path: str | Path, residual: ResidualConfig):
    """(DenseLM or KimiLinearLM, its ResidualConfig) to start training from the folder at `path`.

    A Llama / Qwen3 / Kimi-Linear folder is converted to `residual`. An attnres folder keeps its own
    residual: `residual` must be the default (unset) or equal it, since changing the residual of
    a model whose reads were trained would throw the reads away."""
    path = Path(path)
    model_type = _read_config_json(path).get("model_type")
    if model_type not in ATTNRES_TYPES:
        return from_hf(path, residual=residual).model.train(), residual
    saved = ATTNRES_TYPES[model_type].config_class.from_pretrained(path).to_model_config().residual
    if residual != ResidualConfig() and residual != saved:
        from attnres.layers.residual import Residual
        raise ConversionError(f"{path} is a {Residual(saved).describe()} model; leave "
                              f"residual unset (or set it to the folder's) to continue it, or "
                              f"convert its source again with another --residual")
    return load_attnres(path).model.train(), saved


@torch.no_grad()
def _to_kimi_linear(model: AttnResKimiLinearForCausalLM):
    """KimiLinearForCausalLM with the weights of a prenorm kimi-linear model: each of its
    tensors is gathered from ours through the same table the conversion in uses."""
    from transformers import KimiLinearConfig, KimiLinearForCausalLM
    c = model.model.cfg
    missing = [what for what, bad in (
        ("gate_rank != kda_head_dim", c.gate_rank != c.kda_head_dim),
        ("RoPE in MLA (mla_rope)", c.mla_rope),
        (f"latent_norm_eps {c.latent_norm_eps} (transformers: 1e-6)", c.latent_norm_eps != 1e-6),
        ("an aux balance loss", c.aux_loss_coef > 0)) if bad]
    if missing:
        raise ConversionError(f"KimiLinearForCausalLM has no {'; '.join(missing)}")
    kinds = c.layer_kinds()
    hf_config = KimiLinearConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
        initializer_range=c.init_std, tie_word_embeddings=c.tie_embeddings,
        layer_types=["full_attention" if k == "M" else "linear_attention" for k in kinds],
        mlp_layer_types=["dense" if j < c.first_k_dense else "sparse" for j in range(c.n_layers)],
        linear_num_heads=c.kda_heads, linear_head_dim=c.kda_head_dim,
        linear_conv_kernel_dim=c.conv_size, num_attention_heads=c.mla_heads,
        num_key_value_heads=c.mla_heads, qk_nope_head_dim=c.d_nope, qk_rope_head_dim=c.d_rope,
        v_head_dim=c.d_v, kv_lora_rank=c.kv_lora_rank, num_experts=c.n_experts,
        num_experts_per_token=c.top_k, num_shared_experts=c.n_shared,
        moe_intermediate_size=c.d_expert, intermediate_size=c.dense_width,
        routed_scaling_factor=c.routed_scale, bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id)
    out = KimiLinearForCausalLM(hf_config).to(model.dtype)
    ours = model.model.state_dict()
    for name, dest in out.state_dict(keep_vars=True).items():
        pairs = kimi_targets(name, dest)
        if pairs is None:
            if c.tie_embeddings and name == "lm_head.weight":
                continue
            raise ConversionError(f"export: KimiLinearForCausalLM's {name} has no attnres tensor")
        parts = [ours[t] if row is None else ours[t][row] for t, row, _ in pairs]
        key, _ = _template(name)
        value = torch.cat(parts, dim=KIMI_SPLITS[key][0]) if len(parts) > 1 else parts[0]
        dest.copy_(value.reshape(dest.shape))
    return out.eval()


def to_hf(model: AttnResPreTrainedModel, out: str | Path) -> str:
    """Save `model` under `out`: prenorm as plain transformers (returns its model type), any
    other residual as the attnres model type."""
    kind = (model.config.residual or {}).get("kind", "prenorm")
    target = to_hf_model(model) if kind == "prenorm" else model
    target.save_pretrained(out)
    return target.config.model_type
