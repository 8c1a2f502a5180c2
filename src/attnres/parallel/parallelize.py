"""`parallelize(model, cfg, device)`: parallelism applied to a built model from outside, as
torchtitan does it; the trainer sees only the small `Parallel` interface it returns.

One class per mode, chosen by `cfg.parallel`:

| mode | class | what it does to the model |
|---|---|---|
| `none`, pp 1 | `Parallel` | nothing: one process, no communication |
| `dp` | `DataParallel` | `DistributedDataParallel` around it (`distributed.apply_ddp`) |
| `fsdp` | `FullyShardedParallel` | FSDP2 `fully_shard` in place (`distributed.apply_fsdp`) |
| `pp > 1` | `pp_train.PipelineParallel` | this rank's pipeline stages (`pipeline.PipelineRunner`) |

The interface (every mode implements all of it; the trainer never asks which mode it runs):
- `device`, `is_main` (rank 0 writes metrics and checkpoints), `data_world` (the ranks that
  split the global batch, and this rank's place among them);
- `build_optimizer(make)`: the optimizer over what this rank trains (`make(params)` builds one);
- `forward_backward(x, y, max_norm) -> (loss, grad_norm, stats)`: one global batch's loss (the
  same on every rank), its gradients, clipped to `max_norm` with the global norm, and extra
  per-step metrics (pp: block-vector counts); no update;
- `eval_loss(x, y)`: the forward-only loss, the same on every rank;
- `reduce_sum`, `reduce_max` (in-place all-reduce of a tensor, or None in one process),
  `any_rank(flag)`, `barrier()`;
- `full_weights(modules)`: a context in which those modules' weights are whole (FSDP2: gathered);
- `main_model()`: the whole, current model on rank 0 for analyses, or None;
- `check_eval(batches)`, `autocast()`, and `checkpointer(optimizer, scheduler)`: the
  `attnres.train.checkpoint.Checkpointer` that saves and loads the single-process layout.

Order of application (torchtitan's): move to the device, compile (`train.compile`: each decoder
layer, `modes.compile_layers`), then DDP / FSDP2 or the pipeline split (which refuses compile).
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import MODES
from .modes import DataParallel, FullyShardedParallel, Parallel
from .pp_train import PipelineParallel


def parallelize(model: nn.Module, cfg, device: torch.device) -> "Parallel":
    """Apply `cfg.parallel` to `model` (built identically on every rank) and train it on
    `device` (cuda becomes cuda:LOCAL_RANK); joins torchrun's process group where needed."""
    par = cfg.parallel
    if par.pp > 1:
        return PipelineParallel(model, cfg, device)
    if par.mode not in MODES:
        raise ValueError(f"parallel mode {par.mode!r} is not one of {', '.join(MODES)}")
    return {"none": Parallel, "dp": DataParallel, "fsdp": FullyShardedParallel}[par.mode](
        model, cfg, device)
