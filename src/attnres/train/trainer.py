"""The training loop: one Trainer, built from a Config, that trains, evaluates and checkpoints.

Step order (docs/OPTIM.md#step-order): forward, backward, global grad-norm clip, optimizer step (Muon +
AdamW), QK-Clip, LR schedule, zero grads.

Reliability (docs/RELIABILITY.md): a step whose loss or gradient norm is not finite is skipped
(no update; counted as `skipped_steps`, with a warning); more than `train.max_skipped_steps` in a
row raise `TrainingDiverged` without saving, so the last good checkpoint stays the latest one.
SIGINT / SIGTERM finish the current step, save a checkpoint and raise `TrainingInterrupted`; a
second SIGINT aborts at once. Rank 0 holds `<run>/.lock` while it trains, so one process writes
a run folder; `--resume` continues in the checkpoint's run folder.

Parallelism (`parallel.mode` dp | fsdp, `parallel.pp` > 1; under torchrun, docs/DISTRIBUTED.md)
is applied from outside by `attnres.parallel.parallelize`, whose `Parallel` object the trainer
drives without asking which mode it is: this rank's slice of the global batch (`data_world`),
forward, backward and the global-norm clip (`forward_backward`), evaluation (`eval_loss`), the
reductions of the MoE counts and QK-Clip maxima (`reduce_sum`, `reduce_max`), and a
`Checkpointer` that writes and reads the single-process layout (attnres.train.checkpoint). Only
rank 0 writes metrics, progress and checkpoints. With `parallel.mode = none` and pp 1 nothing
communicates and the run is the single-process one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from attnres import units
from attnres.analysis.depth import depth_analysis, depth_trace
from attnres.config import Config, ConfigError, from_dict
from attnres.data import BatchLoader, TokenData, check_length, eval_batches, prepare_data
from attnres.data.tokenizer import tokenizer_from_dict
from attnres.optim import build_optimizer, build_scheduler
from attnres.optim.qk_clip import apply_qk_clip, attention_layers, enable_tracking, reset_max_logits
from attnres.parallel import launch_rank, parallelize
from attnres.train import checkpoint as ckpt
from attnres.layers.moe import moe_layers, update_all_biases
from attnres.train.build import build_model, model_config, model_meta, resolve_device
from attnres.train.metrics import MetricsWriter, trim_metrics
from attnres.train.runlock import run_lock


class TrainingDiverged(RuntimeError):
    """More than `train.max_skipped_steps` non-finite steps in a row; the message names the step."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a step and a checkpoint; the message is the one
    line to print (where the checkpoint is, how to resume)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@dataclass
class RunResult:
    step: int
    val_loss: float
    val_bpb: float
    tokens_per_s: float
    wall_s: float
    train_s: float
    peak_rss_mb: float
    params: int
    run_dir: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path | None = None, data: TokenData | None = None,
                 resume: str | Path | None = None):
        if cfg.train.init_from:
            cfg = _pretrained_tokenizer(cfg)
        self.cfg = cfg
        if run_dir is None and resume is not None:  # continue in the checkpoint's run folder
            where = ckpt.resolve_checkpoint(resume)
            run_dir = where.parent.parent if where.parent.name == "checkpoints" else None
        self.run_dir = Path(run_dir or cfg.train.out_dir)
        device = resolve_device(cfg.train.device)  # a bad --device fails before any data is read
        self.data = data or prepare_data(cfg.data.source, cfg.data.tokenizer,
                                         cfg.data.vocab_size or None, cfg.data.val_fraction,
                                         cfg.data.cache_dir, workers=cfg.data.workers,
                                         text_column=cfg.data.text_column,
                                         progress=cfg.train.progress and launch_rank() == 0)
        if cfg.train.init_from:  # shape and weights from the folder (docs/HF.md#continued-training)
            self.model, self.cfg, self.model_cfg = _init_model(cfg, self.data.tokenizer)
            cfg = self.cfg
        else:
            self.model_cfg = model_config(cfg, self.data.tokenizer.vocab_size)
        self.seq_len = cfg.train.seq_len or self.model_cfg.max_seq_len
        check_length(self.data.train, self.seq_len, "training split")
        check_length(self.data.val, self.seq_len, "validation split")
        if not cfg.train.init_from:
            self.model = build_model(cfg, self.data.tokenizer.vocab_size, self.model_cfg)
        # DDP / FSDP2 / pipeline stages, on this rank's device
        self.par = parallelize(self.model, cfg, device)
        self.device = self.par.device
        self.optimizer = self.par.build_optimizer(self._build_optimizer)
        warmup = None if cfg.sched.warmup_steps < 0 else cfg.sched.warmup_steps
        self.scheduler = build_scheduler(self.optimizer, kind=cfg.sched.kind,
                                         total_steps=cfg.train.steps, warmup_steps=warmup,
                                         decay_frac=cfg.sched.decay_frac,
                                         final_ratio=cfg.sched.final_ratio, shape=cfg.sched.shape)
        self.checkpointer = self.par.checkpointer(self.optimizer, self.scheduler)
        world = self.par.data_world  # each rank takes its slice of the global batch (pp: all of it)
        if cfg.train.batch_size % world.size:
            raise ConfigError(f"train.batch_size = {cfg.train.batch_size} (the global batch) is "
                              f"not divisible by the {world.size} data-parallel ranks")
        self.loader = BatchLoader(self.data.train, cfg.train.batch_size // world.size,
                                  self.seq_len, cfg.train.data_seed, rank=world.rank,
                                  world_size=world.size)
        self.eval_set = eval_batches(self.data.val, cfg.train.batch_size, self.seq_len,
                                     cfg.train.eval_batches)
        self.par.check_eval(self.eval_set)
        self._step_stats: dict[str, int] = {}  # the last step's extras (pp: block-vector counts)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0  # non-finite steps skipped, in all
        self._skipped_in_a_row = 0
        self._signal: int | None = None  # the first SIGINT / SIGTERM received while training
        self.has_moe = bool(moe_layers(self.model))
        self._expert_counts: dict[str, list[int]] = {}  # summed since the last log line
        # QK-Clip (docs/OPTIM.md#qk-clip): attention layers track their per-head max logit while
        # training, exactly on logged steps, else skipping heads under their bound (train_step).
        self.qk_clip = cfg.optim.qk_clip_enabled() and enable_tracking(self.model) > 0
        # the q/k weights QK-Clip rescales (FSDP2: gathered whole around it)
        self._qk_weights = [getattr(m, n) for _, m in attention_layers(self.model)
                            for n in ("q_proj", "k_proj", "kv_b_proj") if hasattr(m, n)]
        self._qk_record: dict[str, Any] = {}  # the last step's max logits and clipped heads
        if resume is not None:
            self._resume(resume)

    # --- public -------------------------------------------------------------------------------

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.seq_len

    def meta(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "model": model_meta(self.cfg, self.model),
                "tokenizer": self.data.tokenizer.to_dict(), "corpus": self.data.corpus_name,
                "data_fingerprint": self.data.fingerprint}

    def train(self) -> RunResult:
        """Train to `train.steps`, save, evaluate, run the depth analyses; return the result."""
        with self._lock():
            return self._train()

    def _train(self) -> RunResult:
        cfg = self.cfg.train
        start_wall = time.perf_counter()
        train_s, trained_tokens = self._loop(cfg.steps)
        val_loss, val_bpb = self.evaluate()
        model = self.par.main_model()  # None except on rank 0, and under fsdp
        if cfg.analysis and model is not None:
            analysis = depth_analysis(model, *self.eval_set[0], device=self.device,
                                      autocast=self.autocast)
            (self.run_dir / "analysis.json").write_text(json.dumps(analysis))
        result = RunResult(step=self.step, val_loss=val_loss, val_bpb=val_bpb,
                           tokens_per_s=trained_tokens / max(train_s, 1e-9),
                           wall_s=time.perf_counter() - start_wall, train_s=train_s,
                           peak_rss_mb=peak_memory_mb(self.device),
                           params=self.model.num_params(), run_dir=str(self.run_dir))
        with self._metrics() as metrics:
            metrics.log("final", self.step, **{k: v for k, v in result.to_dict().items() if k != "step"})
        if self.par.is_main:
            (self.run_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        return result

    def train_steps_only(self, stop_at: int) -> None:
        """Train up to step `stop_at` and checkpoint, as a run stopped there would have."""
        with self._lock():
            self._loop(min(stop_at, self.cfg.train.steps))

    @contextlib.contextmanager
    def _lock(self):
        """Rank 0 holds the run folder's lock while it writes there (runlock.py)."""
        if not self.par.is_main or getattr(self, "_locked", False):
            yield
            return
        with run_lock(self.run_dir):
            self._locked = True
            try:
                yield
            finally:
                self._locked = False

    def _loop(self, stop_at: int) -> tuple[float, int]:
        cfg = self.cfg.train
        if self.par.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            if not getattr(self, "_metrics_started", False):  # each step is logged once
                trim_metrics(self.run_dir, self.step)
        train_s, trained_tokens = 0.0, 0
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or not self.par.is_main,
                   unit="step", dynamic_ncols=True, desc=self.run_dir.name)
        with self._metrics() as metrics, bar, self._signals():
            if self.step == 0:
                metrics.log("params", 0, **self.param_counts())
                self._log_depth_trace(metrics)
            while self.step < stop_at:
                t0 = time.perf_counter()
                loss, grad_norm, lr = self.train_step()
                train_s += time.perf_counter() - t0
                trained_tokens += self.tokens_per_step
                self.step += 1
                tok_s = trained_tokens / max(train_s, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
                if self._skipped_in_a_row:
                    self._warn(f"{self.run_dir.name} step {self.step}: loss {loss}, grad norm "
                               f"{grad_norm}: update skipped ({self._skipped_in_a_row} in a row, "
                               f"limit {cfg.max_skipped_steps})")
                if self._skipped_in_a_row > cfg.max_skipped_steps:
                    metrics.log("train", self.step, loss=loss, lr=lr, grad_norm=grad_norm,
                                skipped_steps=self.skipped_steps)
                    raise TrainingDiverged(self._diverged_message())
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    record = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tok_s,
                              "tokens": self.step * self.tokens_per_step,
                              "skipped_steps": self.skipped_steps, **self._qk_record,
                              **self._step_stats}
                    metrics.log("train", self.step, **record)
                    self.history.append({"step": self.step, **record})
                    if self.has_moe:
                        metrics.log("moe", self.step, layers=self._expert_load())
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    val_loss, val_bpb = self.evaluate()
                    metrics.log("eval", self.step, val_loss=val_loss, val_bpb=val_bpb)
                    self._log_depth_trace(metrics)
                    self.history.append({"step": self.step, "val_loss": val_loss, "val_bpb": val_bpb})
                    if self.par.is_main:
                        bar.write(f"{self.run_dir.name} step {self.step}: val loss "
                                  f"{val_loss:.4f}, val bpb {val_bpb:.4f}")
                if self.par.any_rank(self._signal is not None):
                    break
                # never inside a run of skipped steps: the update before it may have made the
                # weights non-finite, and pruning would then drop the last good checkpoint
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < stop_at \
                        and not self._skipped_in_a_row:
                    self.save()
            saved = self.save()
        if self.par.any_rank(self._signal is not None):  # every rank stops at the same step
            name = signal.Signals(self._signal).name if self._signal else "a signal on another rank"
            raise TrainingInterrupted(
                f"interrupted by {name} at step {self.step}; checkpoint saved to {saved}; "
                f"resume with: attnres train --resume {self.run_dir}",
                self._signal or signal.SIGINT)
        return train_s, trained_tokens

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT / SIGTERM set a flag the loop checks after each step; a second SIGINT raises
        KeyboardInterrupt at once. The previous handlers come back when training ends. Signal
        handlers can only be set from the main thread; elsewhere the defaults stay."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            if self._signal is None:
                self._signal = signum
                self._warn(f"{signal.Signals(signum).name}: stopping after this step and saving "
                           f"a checkpoint (Ctrl-C again to abort without saving)")
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _warn(self, message: str) -> None:
        if self.par.is_main:
            tqdm.write(f"attnres train: warning: {message}", file=sys.stderr)

    def _diverged_message(self) -> str:
        latest = self.run_dir / "checkpoints" / "latest"
        kept = (f"the last checkpoint, {latest.read_text().strip()} in {latest.parent}, is kept"
                if latest.is_file() else "no checkpoint had been saved")
        return (f"training diverged at step {self.step}: {self._skipped_in_a_row} non-finite steps "
                f"in a row (train.max_skipped_steps = {self.cfg.train.max_skipped_steps}); "
                f"stopping without saving; {kept}")

    def _log_depth_trace(self, metrics) -> None:
        """AttnRes: embedding weight and entropy of every read on the first validation batch, at
        step 0 and every evaluation (one forward; rank 0 only, when it holds the current whole
        model: not under fsdp, under pp only before training)."""
        model = self.par.main_model()
        if not self.model.residual.is_attnres or model is None:
            return
        trace = depth_trace(model, self.eval_set[0][0].to(self.device), self.autocast)
        metrics.log("depth", self.step, **trace)

    @contextlib.contextmanager
    def _metrics(self):
        """Metrics are appended across resumes, so a resumed run keeps one continuous log."""
        if not self.par.is_main:  # only rank 0 writes metrics
            yield _NoMetrics()
            return
        writer = MetricsWriter(self.run_dir, tensorboard=self.cfg.train.tensorboard)
        self._metrics_started = True
        try:
            yield writer
        finally:
            writer.close()

    def train_step(self) -> tuple[float, float, float]:
        self.model.train()
        if self.qk_clip:  # exact maxima on the steps whose record is logged, else the bound
            logged = (self.step + 1) % self.cfg.train.log_every == 0 \
                or self.step + 1 == self.cfg.train.steps
            enable_tracking(self.model, tau=None if logged else self.cfg.optim.qk_clip_tau)
        x, y = (t.to(self.device) for t in self.loader.get(self.step))
        # the loss and the norm are the global batch's, the same on every rank: all skip together
        value, grad_norm, self._step_stats = self.par.forward_backward(x, y, self._max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        # a non-finite loss or gradient skips the update (docs/OPTIM.md#step-order), counted against the limit
        finite = math.isfinite(value) and math.isfinite(grad_norm)
        self._skipped_in_a_row = 0 if finite else self._skipped_in_a_row + 1
        self.skipped_steps += not finite
        if finite:
            self.optimizer.step()
            if self.qk_clip:  # on the updated weights; resets the statistics
                with self.par.full_weights(self._qk_weights):
                    self._qk_record = apply_qk_clip(self.model, self.cfg.optim.qk_clip_tau,
                                                    reduce=self.par.reduce_max).to_record()
        elif self.qk_clip:  # a skipped step still resets
            reset_max_logits(self.model)
        self.scheduler.step()
        if self.has_moe:  # aux-loss-free balancing: bias update after the step (docs/BACKBONE.md#aux-loss-free-balancing)
            for name, stats in update_all_biases(self.model, reduce=self.par.reduce_sum).items():
                total = self._expert_counts.setdefault(name, [0] * len(stats["counts"]))
                self._expert_counts[name] = [a + b for a, b in zip(total, stats["counts"])]
        self.optimizer.zero_grad(set_to_none=True)
        return value, grad_norm, lr

    @property
    def _max_norm(self) -> float:
        """optim.grad_clip; 0 turns clipping off (the norm is still measured and logged)."""
        return self.cfg.optim.grad_clip or float("inf")

    def _build_optimizer(self, params):
        o = self.cfg.optim
        return build_optimizer(params, optimizer=o.name, lr=o.lr, weight_decay=o.weight_decay,
                               betas=tuple(o.betas), eps=o.eps, momentum=o.momentum,
                               nesterov=o.nesterov, ns_steps=o.ns_steps, muon_impl=o.muon_impl,
                               read_lr_mult=self.cfg.residual.lr_mult)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        total = sum(self.par.eval_loss(x.to(self.device), y.to(self.device))
                    for x, y in self.eval_set)  # the same value on every rank
        val_loss = total / len(self.eval_set)
        bpb = val_loss / math.log(2) / self.data.bytes_per_token_val
        return val_loss, bpb

    def _expert_load(self) -> dict[str, dict[str, Any]]:
        """Per MoE layer: each expert's share of the (token, slot) assignments since the last
        log line, MaxVio = max_e c_e / mean_e c_e - 1 and the number of idle experts."""
        out = {}
        for name, counts in self._expert_counts.items():
            total = sum(counts) or 1
            mean = total / len(counts)
            out[name] = {"load": [c / total for c in counts], "max_vio": max(counts) / mean - 1,
                         "dead": sum(c == 0 for c in counts)}
        self._expert_counts = {}
        return out

    def save(self) -> Path:
        """Checkpoint the current step (collective: every rank helps gather, rank 0 writes)."""
        return self.checkpointer.save(self.run_dir, self.step, self.meta(),
                                      {"data_position": self.step, "history": self.history,
                                       "skipped_steps": self.skipped_steps})

    def autocast(self):
        return self.par.autocast()

    def param_counts(self) -> dict[str, int]:
        total = self.model.num_params()
        attnres = sum(p.numel() for n, p in self.model.named_parameters()
                      if ".res_" in n or n.startswith("final_res"))
        counts = {"params": total, "non_embedding": self.model.num_params(non_embedding=True),
                  "attnres": attnres}
        if hasattr(self.model, "active_params"):
            counts["active_non_embedding"] = self.model.active_params()
        return {**counts, "n_sublayers": units.sublayers_from_layers(self.model_cfg.n_layers)}

    # --- resume -------------------------------------------------------------------------------

    def _resume(self, path: str | Path) -> None:
        where = ckpt.resolve_checkpoint(path)
        meta = ckpt.load_meta(where)
        if meta.get("model") != json.loads(json.dumps(model_meta(self.cfg, self.model))):
            raise ckpt.CheckpointError(f"{where}: saved for another model configuration; "
                                       f"resume with the config stored in {where}/meta.json")
        if meta.get("data_fingerprint") != self.data.fingerprint:
            raise ckpt.CheckpointError(f"{where}: saved with other training data "
                                       f"({meta.get('corpus')}); resuming would change the trajectory")
        state = self.checkpointer.load(where)  # each rank keeps its part (shard, stages)
        self.step = state["step"]
        self.history = list(state.get("extra", {}).get("history", []))
        self.skipped_steps = int(state.get("extra", {}).get("skipped_steps", 0))
        if self.step > self.cfg.train.steps:
            raise ConfigError(f"train.steps = {self.cfg.train.steps} is before the checkpoint's "
                              f"step {self.step} ({where})")


class _NoMetrics:
    """The metrics sink of ranks other than 0."""

    def log(self, *args, **kwargs) -> None:
        pass


def _pretrained_tokenizer(cfg: Config) -> Config:
    """With train.init_from, the folder's own tokenizer.json unless data.tokenizer names
    another tokenizer than the default byte one."""
    if cfg.data.tokenizer == "byte" and (Path(cfg.train.init_from) / "tokenizer.json").is_file():
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=cfg.train.init_from))
    return cfg


def _init_model(cfg: Config, tokenizer):
    """(model, cfg with the model's residual and backbone, model config) from train.init_from."""
    try:
        from attnres.hf.convert import init_model
    except ImportError as err:
        raise ConfigError(f"train.init_from needs transformers ({err.name} missing): pip "
                          f"install 'attnres[hf]'") from None
    from attnres.models.kimi_linear import KimiLinearLM
    model, residual = init_model(cfg.train.init_from, cfg.residual)
    backbone = "kimi-linear" if isinstance(model, KimiLinearLM) else "dense"  # what meta records
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ConfigError(f"the tokenizer ({cfg.data.tokenizer}) has {tokenizer.vocab_size} ids, "
                          f"the model at {cfg.train.init_from} {model.cfg.vocab_size}")
    if not cfg.train.seq_len and model.cfg.max_seq_len > 4096:
        raise ConfigError(f"the model at {cfg.train.init_from} takes {model.cfg.max_seq_len} "
                          f"tokens; set train.seq_len to the training window")
    return model, dataclasses.replace(cfg, residual=residual, model=dataclasses.replace(
        cfg.model, backbone=backbone)), model.cfg


def config_from_checkpoint(path: str | Path) -> tuple[Config, Path, dict[str, Any]]:
    where = ckpt.resolve_checkpoint(path)
    meta = ckpt.load_meta(where)
    return from_dict(meta["config"], where=str(where / "meta.json")), where, meta


def load_for_inference(path: str | Path, device: torch.device):
    """Model (eval mode) and tokenizer from a checkpoint, without data or optimizer."""
    from attnres.train.build import model_from_meta
    _, where, meta = config_from_checkpoint(path)
    model = model_from_meta(meta["model"])
    ckpt.load_weights(where, model)
    return model.to(device).eval(), tokenizer_from_dict(meta["tokenizer"])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux: the peak resident set of this process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
