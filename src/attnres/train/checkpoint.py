"""Checkpoints: safetensors weights plus everything needed to continue the same trajectory.

Layout of one checkpoint folder `<run>/checkpoints/step-<N>/`:
    model.safetensors   weights (and buffers)
    state.pt            optimizer, scheduler, RNG states, step, data position
    meta.json           resolved config, tokenizer, step, format version

A checkpoint is written into a temporary sibling folder, every file fsync'ed, then renamed into
place, and only then is `latest` (a one-line text file) replaced the same way. A crash at any
point leaves the previous checkpoint and `latest` intact.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; the message is one line naming the path."""


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer,
                    scheduler, meta: dict[str, Any], extra_state: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".step-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _write_bytes(tmp / "model.safetensors", save(tensors))
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "extra": extra_state or {},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    _write_bytes(tmp / "state.pt", buf.getvalue())
    meta = dict(meta, step=step, format_version=FORMAT_VERSION)
    _write_bytes(tmp / "meta.json", json.dumps(meta, indent=2, default=str).encode())
    _fsync_dir(tmp)

    if final.exists():  # re-saving the same step: move the old one aside first, never delete first
        old = ckpt_root / f".step-{step}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    _write_atomic(ckpt_root / "latest", f"step-{step}\n".encode())
    _prune(ckpt_root, keep, protect=final.name)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder, a run folder or its `checkpoints/` folder."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.is_file():
            target = root / latest.read_text().strip()
            if not (target / "model.safetensors").exists():
                raise CheckpointError(f"{latest}: points to {target.name}, which is missing or incomplete")
            return target
    raise CheckpointError(f"{path}: no checkpoint here (expected model.safetensors or checkpoints/latest)")


def load_meta(ckpt: Path) -> dict[str, Any]:
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}/meta.json: missing; not an attnres checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{ckpt}/meta.json: corrupt ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt}/meta.json: format version {meta.get('format_version')!r}, "
                              f"this attnres reads {FORMAT_VERSION}")
    return meta


def load_weights(ckpt: Path, model: torch.nn.Module) -> None:
    path = ckpt / "model.safetensors"
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt ({str(err).splitlines()[0]})") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); was it saved with another config?")
    for name, value in tensors.items():
        if value.shape != own[name].shape:
            raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, the model "
                                  f"expects {tuple(own[name].shape)}")
    model.load_state_dict(tensors)


def load_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as err:  # pickle/zip errors come in many types
        raise CheckpointError(f"{path}: corrupt ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    _write_bytes(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prune(root: Path, keep: int, protect: str) -> None:
    if keep <= 0:
        return
    steps = sorted((p for p in root.glob("step-*") if p.is_dir()),
                   key=lambda p: int(p.name.split("-")[1]))
    for old in steps[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
