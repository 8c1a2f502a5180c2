"""Llama / Qwen3 checkpoints converted to attnres: the source's logits and tokens at step 0.

The property (docs/HF.md#step-0-exactness): a zero-query AttnRes read reproduces PreNorm's
normalised sublayer inputs at the configured ε (docs/DESIGN.md#exact-drop-in-at-step-0), so a
converted Full or Block model computes the source's function until it is trained.
"""

import pytest
import torch

import attnres
from attnres.hf import convert

from .conftest import VOCAB, rel

RESIDUALS = {"prenorm": {}, "full": {}, "block": {"block_size": 2}}
IDX = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("residual", RESIDUALS)
@pytest.mark.parametrize("source", ["llama", "qwen3", "kimi_linear"])
def test_converted_model_gives_the_sources_logits_and_tokens(source_dir, source, residual):
    path, src = source_dir(source)
    model = attnres.from_hf(path, residual=residual, **RESIDUALS[residual])
    assert model.model.residual.kind == residual
    with torch.no_grad():
        want, got = src(IDX).logits, model(IDX).logits
    assert rel(got, want) <= 1e-5, rel(got, want)
    if residual == "prenorm" and source != "kimi_linear":  # transformers' arithmetic, in its order
        assert torch.equal(got, want)
    prompt = IDX[:1, :6]
    theirs = src.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    ours = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    # generate() through transformers equals our own cached decoding
    assert torch.equal(ours, model.model.generate(prompt, 10, temperature=0))


@pytest.mark.parametrize("source", ["llama", "qwen3", "kimi_linear"])
def test_attnres_starts_as_the_converted_baseline_in_fp64(source_dir, source):
    """fp64 against our own prenorm conversion (transformers' RMSNorm computes in fp32 even
    for fp64 models, so the fp64 comparison with the source itself stops near 1e-7)."""
    path, _ = source_dir(source)
    base = attnres.from_hf(path, residual="prenorm", dtype=torch.float64)
    with torch.no_grad():
        want = base(IDX).logits
        for residual in ("full", "block"):
            got = attnres.from_hf(path, residual=residual, dtype=torch.float64, **RESIDUALS[residual])(IDX).logits
            assert rel(got, want) <= 1e-10, (residual, rel(got, want))


@pytest.mark.parametrize("source", ["llama", "kimi_linear"])
def test_sharded_source_converts_shard_by_shard(source_dir, source):
    """Kimi-Linear's experts are one tensor each on disk, spread over the shards."""
    path, src = source_dir(source, sharded=True)
    assert len(list(path.glob("model-*.safetensors"))) > 1
    model = attnres.from_hf(path, residual="block", block_size=2)
    with torch.no_grad():
        assert rel(model(IDX).logits, src(IDX).logits) <= 1e-5


@pytest.mark.parametrize("source", ["qwen3", "kimi_linear"])
def test_a_loaded_model_converts_too(source_dir, source):
    """A loaded model holds Kimi-Linear's tensors fused (q/k/v convolution, [gate; up] experts),
    unlike its checkpoint files; both layouts map."""
    _, src = source_dir(source)
    model = attnres.from_hf(src, residual="full")
    with torch.no_grad():
        assert rel(model(IDX).logits, src(IDX).logits) <= 1e-5


def test_negative_control_a_wrong_mapping_is_caught(source_dir, monkeypatch):
    """gate_proj and up_proj have the same shape: swapping them loads without complaint, and
    only the logits comparison can see it."""
    path, src = source_dir("llama")
    names = dict(convert.NAMES)
    names["model.layers.{i}.mlp.gate_proj.weight"], names["model.layers.{i}.mlp.up_proj.weight"] = (
        names["model.layers.{i}.mlp.up_proj.weight"], names["model.layers.{i}.mlp.gate_proj.weight"])
    monkeypatch.setattr(convert, "NAMES", names)
    model = attnres.from_hf(path, residual="block", block_size=2)
    with torch.no_grad():
        assert rel(model(IDX).logits, src(IDX).logits) > 1e-2


def test_negative_control_swapped_expert_halves_are_caught(source_dir, monkeypatch):
    """Kimi-Linear's routed experts w1 (gate) and w3 (up) swapped: same shapes, wrong model."""
    path, src = source_dir("kimi_linear")
    names = dict(convert.KIMI_FILE_NAMES)
    w1, w3 = (f"model.layers.{{i}}.block_sparse_moe.experts.{{e}}.{w}.weight" for w in ("w1", "w3"))
    names[w1], names[w3] = names[w3], names[w1]
    monkeypatch.setattr(convert, "KIMI_FILE_NAMES", names)
    model = attnres.from_hf(path, residual="full")
    with torch.no_grad():
        assert rel(model(IDX).logits, src(IDX).logits) > 1e-3


@pytest.mark.parametrize("source,model_type", [("qwen3", "attnres_llama"),
                                               ("kimi_linear", "attnres_kimi_linear")])
def test_save_pretrained_then_auto_from_pretrained_is_exact(source_dir, tmp_path, source, model_type):
    from transformers import AutoConfig, AutoModelForCausalLM
    path, _ = source_dir(source)
    model = attnres.from_hf(path, residual="block", block_size=2)
    with torch.no_grad():  # trained-looking reads, so the round trip carries them too
        for r in model.model.reads():
            r.query.normal_(0, 0.5)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == model_type
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(back) is type(model)
    tied = back.model.lm_head.weight is back.model.embed_tokens.weight
    assert tied == model.config.tie_word_embeddings
    assert back.state_dict().keys() == model.state_dict().keys()
    from attnres import tags  # the optimizer routing's tags survive transformers' loading
    assert all(tags.get_group(p) for p in back.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(back(IDX).logits, model(IDX).logits)


@pytest.mark.parametrize("source,cls", [("llama", "LlamaForCausalLM"), ("qwen3", "Qwen3ForCausalLM"),
                                        ("kimi_linear", "KimiLinearForCausalLM")])
def test_prenorm_exports_to_plain_transformers(source_dir, tmp_path, source, cls):
    from transformers import AutoModelForCausalLM
    path, src = source_dir(source)
    model = attnres.from_hf(path, residual="prenorm")
    assert convert.to_hf(model, tmp_path) == source
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(back).__name__ == cls
    with torch.no_grad():
        assert torch.equal(back(IDX).logits, src(IDX).logits)


def test_attnres_model_exports_as_attnres_llama(source_dir, tmp_path):
    path, _ = source_dir("llama")
    model = attnres.from_hf(path, residual="full")
    assert convert.to_hf(model, tmp_path) == "attnres_llama"
    with pytest.raises(convert.ConversionError, match="only a prenorm model"):
        convert.to_hf_model(model)


def test_an_unknown_model_type_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(convert.ConversionError) as err:
        attnres.from_hf(tmp_path)
    assert "model type 'gpt2' cannot be converted; supported: llama, qwen3" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_missing_backbone_feature_is_named(tmp_path):
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, mlp_bias=True,
                                   hidden_act="gelu")
    with pytest.raises(convert.ConversionError, match="lacks hidden_act 'gelu' .*; mlp_bias"):
        attnres.from_hf(transformers.LlamaForCausalLM(cfg))


def test_right_padding_changes_nothing(source_dir):
    path, _ = source_dir("llama")
    model = attnres.from_hf(path, residual="block", block_size=2)
    right = torch.ones_like(IDX)
    right[0, -5:] = 0
    with torch.no_grad():
        assert torch.equal(model(IDX, attention_mask=right).logits, model(IDX).logits)


@pytest.mark.parametrize("source", ["llama", "qwen3"])
def test_left_padded_batch_generates_each_prompts_own_tokens(source_dir, source):
    """Prompts of 4 and 7 tokens, left-padded into one batch: each row's greedy continuation and
    the real tokens' logits equal the prompt's alone, and transformers' source model agrees."""
    path, src = source_dir(source)
    model = attnres.from_hf(path, residual="block", block_size=2)
    short, long = IDX[0, :4], IDX[1, :7]
    batch = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), short]), long])
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
        alone = model(short[None]).logits
    assert rel(logits[0, 3:], alone[0]) <= 1e-5
    out = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for row, prompt in ((0, short), (1, long)):
        own = model.generate(prompt[None], max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(out[row, -6:], own[0, -6:]), row
    theirs = src.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out, theirs)


def test_left_padding_on_kimi_linear_is_one_line(source_dir):
    path, _ = source_dir("kimi_linear")
    model = attnres.from_hf(path, residual="full")
    mask = torch.ones_like(IDX)
    mask[0, :3] = 0
    with pytest.raises(ValueError, match="left padding is not supported by the KimiLinearLM") as err:
        model(IDX, attention_mask=mask)
    assert "\n" not in str(err.value)
