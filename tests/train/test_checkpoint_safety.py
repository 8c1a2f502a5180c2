"""Checkpoints are data only: nothing planted in one runs, and flipped bytes are caught."""

import hashlib
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from safetensors.torch import load, save

from attnres import config
from attnres.train import checkpoint as ckpt
from attnres.train.trainer import Trainer, load_for_inference


class _Planted:
    """Unpickling this runs `touch <marker>`, as a hostile checkpoint would."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def saved_run(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    Trainer(config.load(overrides=tiny_overrides + ["train.steps=2"]), run_dir=run).train()
    return run, run / "checkpoints" / "step-2"


def _cfg(tiny_overrides, *extra):
    return config.load(overrides=tiny_overrides + ["train.steps=4", *extra])


def test_a_planted_pickle_never_runs(saved_run, tiny_overrides, tmp_path):
    run, where = saved_run
    marker = tmp_path / "pwned"
    torch.save({"payload": _Planted(marker)}, where / "state.pt")
    probe = tmp_path / "probe"  # the payload is live: unpickling a copy of it does run it
    torch.save({"payload": _Planted(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()
    Trainer(_cfg(tiny_overrides), run_dir=run, resume=run).train()  # format 2: state.pt is ignored
    assert not marker.exists()

    # a format-1 checkpoint (state in a pickle) is refused without reading the pickle
    meta = json.loads((where / "meta.json").read_text())
    (where / "meta.json").write_text(json.dumps(dict(meta, format_version=1)))
    (run / "checkpoints" / "latest").write_text("step-2\n")
    with pytest.raises(ckpt.CheckpointError, match="cannot be resumed safely") as err:
        Trainer(_cfg(tiny_overrides), run_dir=tmp_path / "other", resume=where)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    load_for_inference(where, torch.device("cpu"))  # its safetensors weights still load


def test_resume_reads_no_pickle(saved_run, tiny_overrides, monkeypatch):
    run, _ = saved_run

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    trainer = Trainer(_cfg(tiny_overrides), run_dir=run, resume=run)
    assert trainer.step == 2


@pytest.mark.parametrize("name", ["model.safetensors", "state.safetensors", "state.json"])
def test_flipped_bytes_are_a_one_line_error_naming_the_file(saved_run, tiny_overrides, tmp_path, name):
    run, where = saved_run
    data = bytearray((where / name).read_bytes())
    data[len(data) - 5] ^= 0x01  # inside the tensor data, where the format itself cannot tell
    (where / name).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError) as err:
        Trainer(_cfg(tiny_overrides), run_dir=tmp_path / "other", resume=run)
    message = str(err.value)
    assert f"{name}: corrupt (SHA-256" in message and "\n" not in message
    if name == "model.safetensors":
        with pytest.raises(ckpt.CheckpointError, match="model.safetensors: corrupt"):
            load_for_inference(run, torch.device("cpu"))


def test_state_encoding_round_trips_exact_types():
    random.seed(3)
    np.random.seed(4)
    m = torch.randn(2, 3)
    state = {"rng": ckpt.rng_state(), "groups": [{"betas": (0.9, 0.95), "nesterov": True,
                                                 "name": "muon", "lr": float("inf")}],
             "state": {0: {"step": torch.tensor(3.0), "m": m}}, "none": None}
    tensors = {}
    plain = json.loads(json.dumps(ckpt.encode_state(state, tensors)))
    assert set(tensors) == {"rng/torch", "rng/numpy/1", "state/0/step", "state/0/m"} | (
        {f"rng/cuda/{i}" for i in range(torch.cuda.device_count())} if torch.cuda.is_available() else set())
    back = ckpt.decode_state(plain, tensors)
    assert back["groups"] == state["groups"] and isinstance(back["groups"][0]["betas"], tuple)
    assert list(back["state"]) == [0] and torch.equal(back["state"][0]["m"], state["state"][0]["m"])
    expect = (random.random(), np.random.rand(), torch.rand(1))
    ckpt.set_rng_state(back["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expect


def test_optimizer_state_of_another_shape_is_refused_before_a_step(saved_run, tiny_overrides, tmp_path):
    run, where = saved_run
    tensors = load((where / "state.safetensors").read_bytes())
    key = next(k for k, v in tensors.items() if "momentum_buffer" in k and v.dim() == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    data = save(tensors)
    (where / "state.safetensors").write_bytes(data)
    meta = json.loads((where / "meta.json").read_text())
    meta["sha256"]["state.safetensors"] = hashlib.sha256(data).hexdigest()
    (where / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="momentum_buffer has shape"):
        Trainer(_cfg(tiny_overrides), run_dir=tmp_path / "other", resume=run)
