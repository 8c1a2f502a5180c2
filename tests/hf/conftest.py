"""Tiny random transformers checkpoints built from configs (nothing is downloaded)."""

import pytest

transformers = pytest.importorskip("transformers")

VOCAB = 96


def _perturb(model, seed):
    """transformers initialises norm gains to 1 and biases to 0; random values there too, so a
    mapping that mixed up two norms or two biases would show."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval()


def llama():
    # GQA, attention biases, Llama 3 RoPE scaling (with a short original context, so the three
    # frequency bands all occur at head_dim 16)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, attention_bias=True, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}))


def qwen3():
    # head_dim 24 != 64 / 4, tied embeddings, per-head q/k RMSNorm
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=64,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2))


SOURCES = {"llama": llama, "qwen3": qwen3}


@pytest.fixture(scope="session")
def source_dir(tmp_path_factory):
    """source name -> (folder written by save_pretrained, the loaded source model)."""
    import torch
    made = {}

    def get(name, sharded=False):
        key = (name, sharded)
        if key not in made:
            torch.manual_seed(0)
            model = _perturb(SOURCES[name](), seed=1)
            path = tmp_path_factory.mktemp(f"{name}-sharded" if sharded else name)
            model.save_pretrained(path, max_shard_size="40KB" if sharded else "1GB")
            made[key] = (path, model)
        return made[key]
    return get


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def kimi_linear():
    # KDA, KDA, MLA, KDA; the first FFN dense, then MoE (4 experts, top 2, one shared)
    model = transformers.KimiLinearForCausalLM(transformers.KimiLinearConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=2, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16,
        v_head_dim=16, intermediate_size=48, moe_intermediate_size=16, num_experts=4,
        num_experts_per_token=2, linear_head_dim=16, linear_num_heads=2,
        max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"]))
    import torch
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # a selection bias of the size training gives it
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.01 * torch.randn(b.shape, generator=g))
    return model


SOURCES["kimi_linear"] = kimi_linear
