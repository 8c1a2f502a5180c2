"""`attnres convert` at the command line, `attnres train --init-from`, and tokenizer.json
tokenizers (docs/HF.md#continued-training)."""

import json

import pytest
import torch
import transformers

from attnres.cli import main
from attnres.data.tokenizer import BPETokenizer, FileTokenizer, build_tokenizer

from .conftest import _perturb, rel


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny Qwen3 folder with its own BPE tokenizer.json (vocab 300) beside the weights."""
    path = tmp_path_factory.mktemp("qwen3-tok")
    text = ["the king and queen of denmark speak to their court about love and death"] * 50
    tok = BPETokenizer.train(text, vocab_size=300)
    tok._tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    torch.manual_seed(0)
    model = _perturb(transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        tie_word_embeddings=True)), seed=2)
    model.save_pretrained(path)
    return path, model


def test_convert_from_hf_then_auto_load_gives_the_sources_logits(capsys, tmp_path, pretrained):
    src_dir, src = pretrained
    out = tmp_path / "block"
    code, stdout, err = run_cli(capsys, "convert", "--from-hf", src_dir, "--residual", "block",
                                "--block-size", "2", "--out", out)
    assert code == 0, err
    assert "residual block (S=2)" in stdout and "tokenizer.json" in stdout
    import attnres  # noqa: F401  (registers attnres_llama)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    idx = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(model(idx).logits, src(idx).logits) <= 1e-5
    # and back: an AttnRes model exports as attnres_llama, a prenorm one as plain Qwen3
    code, stdout, _ = run_cli(capsys, "convert", "--to-hf", out, "--out", tmp_path / "back")
    assert code == 0 and stdout.strip().endswith("attnres_llama")
    run_cli(capsys, "convert", "--from-hf", src_dir, "--out", tmp_path / "pre")
    code, stdout, _ = run_cli(capsys, "convert", "--to-hf", tmp_path / "pre", "--out", tmp_path / "plain")
    assert code == 0 and stdout.strip().endswith("qwen3")
    plain = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path / "plain").eval()
    with torch.no_grad():
        assert torch.equal(plain(idx).logits, src(idx).logits)


BAD = {
    "unknown-model-type": (lambda d: (d / "config.json").write_text('{"model_type": "gpt2"}'),
                           "model type 'gpt2' cannot be converted; supported: llama, qwen3"),
    "no-config": (lambda d: None, "no config.json"),
    "corrupt-weights": (lambda d: (transformers.LlamaConfig(
        vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=2).save_pretrained(d), (d / "model.safetensors").write_bytes(b"\x00" * 64)),
        "model.safetensors: unreadable"),
    "no-weights": (lambda d: transformers.LlamaConfig(
        vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=2).save_pretrained(d), "no model.safetensors"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_source_is_one_line_and_exit_2(capsys, tmp_path, case):
    make, message = BAD[case]
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    code, out, err = run_cli(capsys, "convert", "--from-hf", src, "--residual", "full",
                             "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.startswith("attnres convert: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_file_tokenizer_round_trips_and_ends_documents(pretrained):
    path, _ = pretrained
    tok = build_tokenizer(str(path))
    assert isinstance(tok, FileTokenizer) and tok.vocab_size == 300
    assert tok.eod_id == tok._tok.token_to_id("<|endoftext|>")
    text = "the queen speaks of love, and the ghost walks"
    assert tok.decode(tok.encode(text)) == text
    again = FileTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode(text) == tok.encode(text) and again.eod_id == tok.eod_id


def test_train_init_from_a_converted_folder_with_its_tokenizer(capsys, tmp_path, pretrained,
                                                               run_overrides):
    src_dir, src = pretrained
    out = tmp_path / "block"
    assert run_cli(capsys, "convert", "--from-hf", src_dir, "--residual", "block",
                   "--block-size", "2", "--out", out)[0] == 0
    args = ["train", "--init-from", out, "--steps", "5", "--out", tmp_path / "run"]
    for o in run_overrides + ["train.eval_every=5", "optim.qk_clip=off"]:
        args += ["--set", o]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    meta = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-5/meta.json")).read_text())
    assert meta["config"]["residual"]["kind"] == "block" and meta["config"]["residual"]["block_size"] == 2
    assert meta["config"]["data"]["tokenizer"] == str(out) and meta["tokenizer"]["kind"] == "file"
    assert meta["model"]["vocab_size"] == 320 and meta["model"]["qk_norm"]
    code, stdout, _ = run_cli(capsys, "generate", "--ckpt", tmp_path / "run", "--prompt", "the king",
                              "--max-new-tokens", "5", "--device", "cpu")
    assert code == 0 and stdout.startswith("the king")
    # and the run exports with its tokenizer
    code, stdout, _ = run_cli(capsys, "convert", "--to-hf", tmp_path / "run", "--out", tmp_path / "hf")
    assert code == 0 and stdout.strip().endswith("attnres_llama")
    exported, source = (json.loads((d / "tokenizer.json").read_text()) for d in (tmp_path / "hf", src_dir))
    assert exported["model"] == source["model"]  # the same vocabulary and merges


def test_init_from_refuses_another_residual_for_an_attnres_folder(capsys, tmp_path, pretrained,
                                                                  run_overrides):
    src_dir, _ = pretrained
    out = tmp_path / "full"
    run_cli(capsys, "convert", "--from-hf", src_dir, "--residual", "full", "--out", out)
    args = ["train", "--init-from", out, "--residual", "block", "--steps", "2"]
    for o in run_overrides:
        args += ["--set", o]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "is a full model" in err and len(err.strip().splitlines()) == 1


def test_train_init_from_a_kimi_linear_folder(capsys, tmp_path, run_overrides):
    """A plain KimiLinearForCausalLM folder, converted to Block on the spot; the byte tokenizer
    (257 ids) fits its 260-id vocabulary."""
    from .conftest import kimi_linear
    src = kimi_linear()
    src.config.vocab_size = 260
    src = _perturb(transformers.KimiLinearForCausalLM(src.config), seed=3)
    src.save_pretrained(tmp_path / "kimi")
    args = ["train", "--init-from", tmp_path / "kimi", "--residual", "block", "--block-size", "2",
            "--steps", "5", "--out", tmp_path / "run"]
    for o in run_overrides + ["train.eval_every=5"]:
        args += ["--set", o]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step-5" / "meta.json").read_text())
    assert meta["model"]["backbone"] == "kimi-linear" and meta["model"]["layer_pattern"] == "KKMK"
    assert meta["model"]["residual"]["kind"] == "block"
    # the run exports back as an AttnRes Kimi-Linear model
    code, stdout, err = run_cli(capsys, "convert", "--to-hf", tmp_path / "run", "--out", tmp_path / "hf")
    assert code == 0 and stdout.strip().endswith("attnres_kimi_linear"), err


def test_a_tokenizer_without_an_end_of_text_token_is_one_line(capsys, tmp_path, run_overrides):
    tok = BPETokenizer.train(["some text to learn from"] * 5, vocab_size=260)
    tok._tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    args = ["train", "--steps", "1", "--out", tmp_path / "run"]
    for o in run_overrides + [f"data.tokenizer={tmp_path}"]:
        args += ["--set", o]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "no end-of-text token in the vocabulary (looked for </s>)" in err
    assert len(err.strip().splitlines()) == 1
