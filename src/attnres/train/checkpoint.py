"""Checkpoints: safetensors weights plus everything needed to continue the same trajectory.

Layout of one checkpoint folder `<run>/checkpoints/step-<N>/` (format 2, docs/RELIABILITY.md):
    model.safetensors   weights (and buffers)
    state.safetensors   every tensor of the trainer state: optimizer state, torch/CUDA RNG
                        states, numpy's RNG key (as int64), keyed by their path in the state
    state.json          the rest of the trainer state: optimizer param groups and non-tensor
                        state, scheduler, Python RNG, step, data position, history; a tensor
                        appears as {"__tensor__": key}, a tuple as {"__tuple__": [...]}
    meta.json           resolved config, tokenizer, step, format version and the SHA-256 of
                        every other file, checked before a file is parsed

Every file is data: nothing is unpickled on load, so a planted checkpoint cannot run code. A
format-1 checkpoint (a pickled state.pt) is refused for resuming; its model.safetensors can
still be loaded for `attnres generate`, since safetensors holds only tensors.

A checkpoint is written into a temporary sibling folder, every file fsync'ed, then renamed into
place, and only then is `latest` (a one-line text file) replaced the same way. A crash at any
point leaves the previous checkpoint and `latest` intact.

`Checkpointer` is what the trainer saves and resumes through: `save(...)` and `load(where)`. This
class is the single-process one; the parallel modes (`attnres.parallel`) subclass it and change
only how the full state is gathered (`full_state`) and restored (`restore`), so that every mode
writes and reads this one layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors, save

FORMAT_VERSION = 2
# format 1 pickled the trainer state into state.pt; its weights are safetensors and still load
READABLE_WEIGHTS = (1, 2)
CHECKED_FILES = ("model.safetensors", "state.safetensors", "state.json")


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; the message is one line naming the path."""


def save_checkpoint(run_dir: str | Path, step: int, weights: dict[str, torch.Tensor],
                    optimizer: dict[str, Any], scheduler: dict[str, Any] | None,
                    meta: dict[str, Any], extra_state: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    """Write checkpoint `step` of `run_dir` from full state dicts (weights: the model's
    `state_dict()`; optimizer, scheduler: theirs)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".step-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    state = {
        "step": step,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "rng": rng_state(),
        "extra": extra_state or {},
    }
    tensors: dict[str, torch.Tensor] = {}
    plain = encode_state(state, tensors)
    files = {
        "model.safetensors": save(_unshared(weights)),
        "state.safetensors": save(tensors),
        "state.json": json.dumps(plain).encode(),
    }
    for name, data in files.items():
        _write_bytes(tmp / name, data)
    meta = dict(meta, step=step, format_version=FORMAT_VERSION,
                sha256={name: hashlib.sha256(data).hexdigest() for name, data in files.items()})
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
    if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_WEIGHTS:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(f"{ckpt}/meta.json: format version {version!r}, "
                              f"this attnres reads {FORMAT_VERSION}")
    return meta


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of the weights; a tensor that shares storage with an earlier one (a head tied
    to the embedding) is cloned, since safetensors refuses shared tensors."""
    out, seen = {}, set()
    for k, v in weights.items():
        v = v.detach().contiguous().cpu()
        if v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def load_weights(ckpt: Path, model: torch.nn.Module) -> None:
    """Load the checkpoint's weights into `model` (after `read_weights` and `check_weights`)."""
    tensors = read_weights(ckpt)
    check_weights(ckpt, tensors, model.state_dict())
    model.load_state_dict(tensors)


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, after its SHA-256 matches."""
    path = ckpt / "model.safetensors"
    data = _read_checked(ckpt, "model.safetensors")
    try:
        return load_tensors(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt ({str(err).splitlines()[0]})") from None


def check_weights(ckpt: Path, tensors: dict[str, torch.Tensor], own: dict[str, Any]) -> None:
    """Refuse weights whose names or shapes differ from the model's state dict `own` (a sharded
    model's DTensors report their full shapes)."""
    path = ckpt / "model.safetensors"
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); was it saved with another config?")
    for name, value in tensors.items():
        if value.shape != own[name].shape:
            raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, the model "
                                  f"expects {tuple(own[name].shape)}")


def load_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state (optimizer, scheduler, RNG, step, extra) from state.json and
    state.safetensors, after both checksums match; no pickle is read."""
    if load_meta(ckpt).get("format_version") == 1:
        raise CheckpointError(f"{ckpt}: format 1 keeps the trainer state in a pickle (state.pt), "
                              f"which cannot be resumed safely; its weights still work with "
                              f"attnres generate")
    data = _read_checked(ckpt, "state.safetensors")
    try:
        tensors = load_tensors(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{ckpt}/state.safetensors: corrupt ({str(err).splitlines()[0]})") from None
    try:
        plain = json.loads(_read_checked(ckpt, "state.json"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{ckpt}/state.json: corrupt ({err})") from None
    try:
        state = decode_state(plain, tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{ckpt}/state.json: corrupt ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "rng"} <= set(state):
        raise CheckpointError(f"{ckpt}/state.json: corrupt (not a trainer state)")
    return state


def _read_checked(ckpt: Path, name: str) -> bytes:
    """The bytes of `name`, after its SHA-256 matches the one meta.json records (format 2)."""
    path = ckpt / name
    meta = load_meta(ckpt)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    if meta.get("format_version") == 1:  # no checksums were written then
        return data
    want = (meta.get("sha256") or {}).get(name)
    if not isinstance(want, str):
        raise CheckpointError(f"{ckpt}/meta.json: no SHA-256 recorded for {name}")
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise CheckpointError(f"{path}: corrupt (SHA-256 {got[:12]}..., meta.json records "
                              f"{want[:12]}...)")
    return data


class Checkpointer:
    """Saves and restores a run's model, optimizer, scheduler and RNG state (one process).

    `save` and `load` are collective in the parallel subclasses: every rank calls them.
    Subclasses override `full_state` (gather the full state dicts, single-process layout) and
    `restore` (put full state dicts back into this rank's model and optimizer).
    """

    def __init__(self, model: torch.nn.Module, optimizer, scheduler, is_main: bool = True,
                 barrier=None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.is_main = is_main
        self._barrier = barrier

    def full_state(self) -> tuple[dict, dict, dict] | None:
        """(weights, optimizer state, scheduler state) in the single-process layout, on the
        rank that writes; None on the others."""
        return self.model.state_dict(), self.optimizer.state_dict(), self.scheduler.state_dict()

    def restore(self, weights: dict[str, torch.Tensor], optimizer: dict, scheduler: dict) -> None:
        """Load full state dicts (as `full_state` returns them) into this rank's objects."""
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)

    def save(self, run_dir: str | Path, step: int, meta: dict[str, Any],
             extra_state: dict[str, Any] | None = None) -> Path:
        """Write checkpoint `step` (rank 0 writes, every rank waits for it); returns its path."""
        state = self.full_state()
        path = Path(run_dir) / "checkpoints" / f"step-{step}"
        if state is not None:
            path = save_checkpoint(run_dir, step, *state, meta, extra_state)
        if self._barrier is not None:
            self._barrier()
        return path

    def load(self, ckpt: Path) -> dict[str, Any]:
        """Restore the model, optimizer, scheduler and RNG from checkpoint folder `ckpt`;
        returns its trainer state (step, extra, ...). Errors are one-line `CheckpointError`s."""
        weights = read_weights(ckpt)
        check_weights(ckpt, weights, self.model.state_dict())
        state = load_state(ckpt)
        try:
            self.restore(weights, state["optimizer"], state["scheduler"])
            set_rng_state(state["rng"])
        except (KeyError, IndexError, ValueError, RuntimeError, TypeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{ckpt}/state.json: cannot restore ({reason})") from None
        check_optimizer_shapes(ckpt, self.optimizer)
        return state


def check_optimizer_shapes(ckpt: Path, optimizer) -> None:
    """Refuse per-parameter optimizer state of another shape before any step runs
    (`load_state_dict` itself accepts it and the step would crash). A sharded (DTensor) state
    and its parameter both report full shapes."""
    inner = getattr(optimizer, "optimizers", {"optimizer": optimizer})
    for name, opt in inner.items():
        for p, st in opt.state.items():
            for key, value in st.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise CheckpointError(
                        f"{ckpt}/state.safetensors: {name} {key} has shape "
                        f"{tuple(value.shape)}, its parameter {tuple(p.shape)}; saved for "
                        f"another model?")


# --- the trainer state as JSON plus named tensors -------------------------------------------

def encode_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """`obj` as plain JSON; each tensor (numpy array) goes into `tensors` under its path
    (e.g. "optimizer/optimizers/muon/state/0/momentum_buffer") and leaves a marker behind.
    Tuples and dicts with non-string keys get markers too, so `decode_state` restores the exact
    types that `load_state_dict` and `random.setstate` expect."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().contiguous().cpu().clone()  # clone: no shared storage
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):  # numpy's MT19937 key is uint32: int64 holds it exactly
        tensors[path] = torch.from_numpy(obj.astype(np.int64))
        return {"__ndarray__": path, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors, f"{path}/{k}".lstrip("/")) for k, v in obj.items()}
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in obj):
            raise TypeError(f"checkpoint state {path or '/'}: keys {list(obj)[:3]} are not str or int")
        return {"__items__": [[k, encode_state(v, tensors, f"{path}/{k}".lstrip("/"))]
                              for k, v in obj.items()]}
    raise TypeError(f"checkpoint state {path or '/'}: cannot store a {type(obj).__name__}")


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: decode_state(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_state(v, tensors) for k, v in obj.items()}


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
