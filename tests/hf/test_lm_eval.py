"""lm-evaluation-harness runs a converted model as `--model hf` (docs/HF.md#evaluate), on a
two-question local task (a JSON-lines file; nothing is downloaded)."""

import json

import pytest
import torch
import transformers

import attnres
from attnres.data.tokenizer import BPETokenizer
from attnres.hf.convert import copy_side_files

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

TASK = """task: attnres_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
ROWS = [{"question": "the king", "choices": [" and queen", " of death"], "answer": 0},
        {"question": "love and", "choices": [" death", " king"], "answer": 0}]


@pytest.mark.slow
def test_lm_eval_hf_model_gives_the_sources_loglikelihoods(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = tmp_path / "src"
    src.mkdir()
    tok = BPETokenizer.train([ROWS[0]["question"] + " and queen of death love king"] * 20, 300)
    tok._tok.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=0)).save_pretrained(src)
    block = tmp_path / "block"
    attnres.from_hf(src, residual="block", block_size=2).save_pretrained(block)
    copy_side_files(src, block)
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny.yaml").write_text(TASK.format(data=tmp_path / "data.jsonl"))

    from lm_eval.tasks import TaskManager
    scores = {}
    for name in ("src", "block"):
        out = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={tmp_path / name},dtype=float32",
            tasks=["attnres_tiny"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
            device="cpu", batch_size=2, log_samples=True)
        scores[name] = [float(r[0][0]) for s in out["samples"]["attnres_tiny"] for r in s["resps"]]
    assert len(scores["block"]) == 4
    assert scores["block"] == pytest.approx(scores["src"], rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_lm_eval_command_line_loads_an_attnres_folder(tmp_path):
    """`python -m attnres.hf.evaluate` is lm_eval's command line with attnres registered."""
    import os
    import subprocess
    import sys
    torch.manual_seed(0)
    src = tmp_path / "src"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=0)).save_pretrained(src)
    BPETokenizer.train(["the king and queen of death love"] * 20, 300)._tok.save(str(tmp_path / "tokenizer.json"))
    block = tmp_path / "block"
    attnres.from_hf(src, residual="block", block_size=2).save_pretrained(block)
    (tmp_path / "tokenizer.json").rename(block / "tokenizer.json")
    (block / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny.yaml").write_text(TASK.format(data=tmp_path / "data.jsonl"))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "attnres.hf.evaluate", "--model", "hf",
                           "--model_args", f"pretrained={block},dtype=float32",
                           "--tasks", "attnres_tiny", "--include_path", str(tmp_path / "tasks"),
                           "--device", "cpu", "--batch_size", "2"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "attnres_tiny" in proc.stdout and "acc" in proc.stdout
