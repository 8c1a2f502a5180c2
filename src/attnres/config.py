"""The configuration tree: one dataclass per section, filled from defaults < file < overrides.

Stdlib only (plus PyYAML when a YAML file is given). Every key is typed by its field, so an
override `--train.steps=300` or a TOML value of the wrong type is converted or rejected with one
line naming the key; an unknown key is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad configuration key or value; the message is one line."""


@dataclass
class ModelConfig:
    backbone: str = "dense"          # dense (Llama-style) | kimi-linear (KDA + MLA + MoE)
    preset: str = "tiny"             # fills the shape fields below unless they are set explicitly
    vocab_size: int = 256            # replaced by the tokenizer's vocabulary at build time
    d_model: int = 0                 # 0 (or "") = take from the preset
    n_layers: int = 0
    max_seq_len: int = 0
    n_heads: int = 0                 # dense only
    n_kv_heads: int = 0              # dense only
    d_ff: int = 0                    # dense only
    layer_pattern: str = ""          # kimi-linear only, e.g. "KKKM"
    n_experts: int = 0               # kimi-linear only
    top_k: int = 0                   # kimi-linear only
    first_k_dense: int = -1          # kimi-linear only (-1 = preset)
    kda_mode: str = ""               # kimi-linear only: auto | chunk | recurrent
    bias_update_rate: float = -1.0   # kimi-linear only: MoE balancing step u (-1 = 1e-3)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    latent_norm_eps: float = 1e-6    # kimi-linear only: MLA latent RMSNorm ε (released: 1e-6)
    init_std: float = 0.02


RESIDUAL_KINDS = ("prenorm", "full", "block", "denseformer", "mhc")
DEFAULT_BLOCK_SIZE = 4


@dataclass
class ResidualConfig:
    """How each sublayer's input is formed. One section, one vocabulary: the command line
    (`--residual block --block-size 4`), the saved run config, the reports, the model config
    (`DecoderConfig.residual`, this very object) and `attnres.layers.residual.Residual` all use
    these names (docs/DESIGN.md#the-residual-config).

    `block_size` means something for Block only: Full stores 1 (every sublayer its own block),
    the other kinds 0. Normalised at construction, so a saved config says what ran."""

    kind: str = "prenorm"            # prenorm | full | block | denseformer | mhc (docs/THEORY.md)
    block_size: int = 0              # block: S sublayers per block (0 = 4, or from num_blocks)
    num_blocks: int = 0              # block: if > 0, S = ceil(L / N) for the model's L sublayers
    eps: float = 1e-6                # ε of the keys' RMSNorm inside the depth read
    lr_mult: float = 0.1             # LR of the read parameters = optim.lr × lr_mult (docs/DESIGN.md)
    impl: str = "recompute"          # recompute | two_phase | naive (the plain reference)
    two_phase_group: int = 8         # scheduling group of Full AttnRes under two_phase
    state_dtype: str = "float32"     # float32 | model: dtype of the sources and the PreNorm stream
    # Table-4 ablations of the read (docs/THEORY.md); the defaults are the paper's AttnRes
    key_norm: str = "rms_gain"       # rms_gain | rms (no gain) | none (raw sources as keys)
    kernel: str = "softmax"          # softmax | sigmoid (unnormalised gates)
    query: str = "static"            # static | input_dependent (q = W · RMSNorm(latest source))
    mixing: str = "attention"        # attention | static (per-read logits, no query, no keys)
    window: int = 0                  # Full only: embedding + the W most recent outputs; 0 = none
    heads: int = 1                   # depth-softmax heads (channel groups); must divide d_model

    def __post_init__(self):
        if self.kind == "block":
            if self.block_size > 0 and self.num_blocks > 0:
                raise ConfigError(f"residual.block_size = {self.block_size} and residual."
                                  f"num_blocks = {self.num_blocks}: give one of them")
            if self.block_size == 0 and self.num_blocks == 0:
                self.block_size = DEFAULT_BLOCK_SIZE
        else:
            self.block_size, self.num_blocks = (1 if self.kind == "full" else 0), 0

    @property
    def is_attnres(self) -> bool:
        return self.kind in ("full", "block")

    def sublayers_per_block(self, n_sublayers: int) -> int:
        """S for a model of `n_sublayers` sublayers: 1 for Full, block_size (or ceil(L / N))
        for Block, 0 for the kinds without depth blocks."""
        if self.kind == "block" and self.num_blocks > 0:
            return -(-n_sublayers // self.num_blocks)
        return self.block_size


@dataclass
class OptimConfig:
    name: str = "muon"               # muon (Muon + AdamW routing) | adamw (AdamW only)
    lr: float = 3e-3
    weight_decay: float = 0.1
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0           # global grad-norm clip; 0 = off
    muon_impl: str = "ours"          # ours | torch (torch.optim.Muon, 2-D units only)
    qk_clip: str = "auto"            # QK-Clip after each step: auto (= on for muon) | on | off
    qk_clip_tau: float = 100.0       # τ: per-head max logit allowed (K2)
    muon_dist: str = "replicated"    # under parallel.mode = dp: replicated | sharded (owner-compute)

    def qk_clip_enabled(self) -> bool:
        return self.qk_clip == "on" or (self.qk_clip == "auto" and self.name == "muon")


@dataclass
class ScheduleConfig:
    kind: str = "wsd"                # wsd | cosine | constant
    warmup_steps: int = -1           # -1 = max(1, round(0.02 * steps))
    decay_frac: float = 0.2
    final_ratio: float = 0.1
    shape: str = "cosine"            # WSD decay shape: cosine | linear | sqrt


@dataclass
class DataConfig:
    # shakespeare (bundled) | a text, .jsonl(.gz), .parquet or .arrow file | a folder of them
    # (a `datasets` save_to_disk folder included); formats, split and cache: docs/DATA.md
    source: str = "shakespeare"
    tokenizer: str = "byte"          # byte | bpe | a tokenizer.json, or a model folder holding one
    vocab_size: int = 0              # BPE only; 0 = 4096
    val_fraction: float = 0.05       # share of documents (by id hash) held out for validation
    cache_dir: str = "cache/tokens"
    workers: int = 0                 # tokenising processes; 0 = one per CPU
    text_column: str = "text"        # the field / column of .jsonl, parquet and Arrow rows


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 0                 # 0 = the preset's context length
    # a transformers Llama / Qwen3 folder (converted to residual.kind) or an attnres_llama one
    # (residual unset = the folder's): the model's shape and weights (docs/HF.md#continued-training)
    init_from: str = ""
    seed: int = 0                    # model initialisation
    data_seed: int = 0               # order of training windows
    eval_every: int = 50
    eval_batches: int = 8
    log_every: int = 10
    ckpt_every: int = 0              # 0 = only at the end
    max_skipped_steps: int = 5       # non-finite steps skipped in a row before the run stops
    out_dir: str = "runs/train"
    device: str = "auto"             # auto = cuda when available, else cpu
    dtype: str = "float32"           # float32 | bfloat16 (autocast compute dtype; master weights fp32)
    progress: bool = True
    analysis: bool = True            # depth analyses on a validation batch after training
    tensorboard: bool = True         # written when the tensorboard package is installed
    # torch.compile each decoder layer's mixer and FFN before DDP / FSDP2 wrapping
    # (docs/DISTRIBUTED.md#compile); not with parallel.pp > 1
    compile: bool = False


@dataclass
class ParallelConfig:
    mode: str = "none"               # none (one process) | dp (DDP) | fsdp (FSDP2); dp/fsdp: torchrun
    backend: str = "auto"            # auto (nccl on CUDA, else gloo) | gloo | nccl
    pp: int = 1                      # pipeline ranks P (> 1: torchrun with P processes, mode none)
    virtual_stages: int = 1          # V: chunks per pipeline rank (interleaved schedule when > 1)
    pp_cache: bool = True            # AttnRes cross-stage caching: only block increments travel
    microbatches: int = 0            # M per step; 0 = pp_microbatches' default

    def pp_microbatches(self, batch_size: int) -> int:
        """M: the configured value, or the smallest M >= P that divides the batch and suits the
        schedule (V = 1: M >= P; V > 1: M divisible by max(1, M // P)); failing that (V > 1, a
        batch smaller than P or not divisible by it), the largest divisor of the batch below P.
        0 when no M fits (`check` reports it)."""
        if self.microbatches:
            return self.microbatches
        fits = [m for m in range(1, batch_size + 1)
                if batch_size % m == 0 and _schedule_accepts(m, self.pp, self.virtual_stages)]
        at_least_p = [m for m in fits if m >= self.pp]
        return at_least_p[0] if at_least_p else max(fits, default=0)


def _schedule_accepts(m: int, P: int, V: int) -> bool:
    """Whether PyTorch's 1F1B (V = 1) or interleaved 1F1B (V > 1) schedule takes M = m."""
    return m >= P if V == 1 else m % max(1, m // P) == 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        check(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    ("model", "backbone"): ("dense", "kimi-linear"),
    ("residual", "kind"): RESIDUAL_KINDS,
    ("residual", "impl"): ("recompute", "two_phase", "naive"),
    ("residual", "state_dtype"): ("float32", "model"),
    ("residual", "key_norm"): ("rms_gain", "rms", "none"),
    ("residual", "kernel"): ("softmax", "sigmoid"),
    ("residual", "query"): ("static", "input_dependent"),
    ("residual", "mixing"): ("attention", "static"),
    ("optim", "name"): ("muon", "adamw"),
    ("optim", "muon_impl"): ("ours", "torch"),
    ("optim", "qk_clip"): ("auto", "on", "off"),
    ("optim", "muon_dist"): ("replicated", "sharded"),
    ("parallel", "mode"): ("none", "dp", "fsdp"),
    ("parallel", "backend"): ("auto", "gloo", "nccl"),
    ("sched", "kind"): ("wsd", "cosine", "constant"),
    ("sched", "shape"): ("cosine", "linear", "sqrt"),
    ("train", "dtype"): ("float32", "bfloat16"),
}

# Longest context a model (and a training window) may have. train.seq_len defaults to
# model.max_seq_len, and attention over T = 100000 tokens holds T² = 1e10 scores per head:
# 40 GB in fp32, so the first step dies out of memory (on CPU it did not finish in 10 minutes).
MAX_SEQ_LEN = 32768

# Inclusive range of every numeric key (None: unbounded); keys not listed may take any value.
# Every float key must also be finite. "0 = preset/default" keys start at 0, "-1 = default" at -1.
_RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("model", "vocab_size"): (0, None), ("model", "d_model"): (0, None),
    ("model", "n_layers"): (0, None), ("model", "max_seq_len"): (0, MAX_SEQ_LEN),
    ("model", "n_heads"): (0, None), ("model", "n_kv_heads"): (0, None),
    ("model", "d_ff"): (0, None), ("model", "n_experts"): (0, None), ("model", "top_k"): (0, None),
    ("model", "first_k_dense"): (-1, None), ("model", "bias_update_rate"): (-1, None),
    ("residual", "block_size"): (0, None), ("residual", "num_blocks"): (0, None),
    ("residual", "two_phase_group"): (1, None), ("residual", "window"): (0, None),
    ("residual", "heads"): (1, None),
    ("optim", "weight_decay"): (0, None), ("optim", "momentum"): (0, 1),
    ("optim", "ns_steps"): (1, None), ("optim", "grad_clip"): (0, None),
    ("sched", "warmup_steps"): (-1, None), ("sched", "decay_frac"): (0, 1),
    ("sched", "final_ratio"): (0, 1),
    ("data", "vocab_size"): (0, None), ("data", "workers"): (0, None),
    ("train", "steps"): (1, None), ("train", "batch_size"): (1, None),
    ("train", "seq_len"): (0, MAX_SEQ_LEN), ("train", "seed"): (0, None),
    ("train", "data_seed"): (0, None), ("train", "eval_every"): (1, None),
    ("train", "eval_batches"): (1, None), ("train", "log_every"): (1, None),
    ("train", "ckpt_every"): (0, None), ("train", "max_skipped_steps"): (0, None),
    ("parallel", "pp"): (1, None), ("parallel", "virtual_stages"): (1, None),
    ("parallel", "microbatches"): (0, None),
}
# floats that must be strictly positive (an exclusive bound the table above cannot say)
_ABOVE_ZERO = {("optim", "lr"), ("optim", "eps"), ("optim", "qk_clip_tau"), ("model", "rope_theta"),
               ("model", "norm_eps"), ("model", "init_std"), ("residual", "eps"),
               ("residual", "lr_mult")}


def check(cfg: Config) -> None:
    """Every value of the tree, once, where it is loaded: a bad one is a one-line ConfigError."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{section}.{key} = {value!r} is not one of {', '.join(choices)}")
    tok = cfg.data.tokenizer
    if tok not in ("byte", "bpe") and not (Path(tok).is_file() and tok.endswith(".json")) \
            and not (Path(tok) / "tokenizer.json").is_file():
        raise ConfigError(f"data.tokenizer = {tok!r} is not byte, bpe, a tokenizer.json file or a "
                          f"model folder holding one")
    if cfg.train.init_from and not Path(cfg.train.init_from).is_dir():
        raise ConfigError(f"train.init_from = {cfg.train.init_from!r}: no such folder")
    for f in dataclasses.fields(cfg):
        for key, value in dataclasses.asdict(getattr(cfg, f.name)).items():
            values = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ConfigError(f"{f.name}.{key} must be a finite number, got {value}")
    for (section, key), (low, high) in _RANGES.items():
        value = getattr(getattr(cfg, section), key)
        if (low is not None and value < low) or (high is not None and value > high):
            want = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ConfigError(f"{section}.{key} must be {want}, got {value}")
    if cfg.model.max_seq_len and cfg.train.seq_len > cfg.model.max_seq_len:  # 0: the preset's (build.py)
        raise ConfigError(f"train.seq_len = {cfg.train.seq_len} exceeds model.max_seq_len = "
                          f"{cfg.model.max_seq_len}, the longest window the model takes")
    for section, key in sorted(_ABOVE_ZERO):
        value = getattr(getattr(cfg, section), key)
        if not value > 0:
            raise ConfigError(f"{section}.{key} must be > 0, got {value}")
    if not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas must each be in [0, 1), got {list(cfg.optim.betas)}")
    if not cfg.data.text_column:
        raise ConfigError("data.text_column must name a field, got an empty string")
    if not 0.0 < cfg.data.val_fraction < 0.5:
        raise ConfigError(f"data.val_fraction must be in (0, 0.5), got {cfg.data.val_fraction}")
    _check_schedule(cfg)
    if not 0 < cfg.model.latent_norm_eps < 1:
        raise ConfigError(f"model.latent_norm_eps must be in (0, 1), got {cfg.model.latent_norm_eps}")
    _check_read_variant(cfg)
    if cfg.optim.muon_dist == "sharded" and cfg.parallel.mode != "dp":
        raise ConfigError(f"optim.muon_dist = sharded applies to parallel.mode = dp (fsdp already "
                          f"shards momentum), got parallel.mode = {cfg.parallel.mode}")
    if cfg.parallel.mode == "fsdp" and cfg.optim.name == "muon" and cfg.optim.muon_impl == "torch":
        raise ConfigError("optim.muon_impl = torch runs Newton-Schulz on local shards under "
                          "parallel.mode = fsdp; use optim.muon_impl = ours")
    _check_pipeline(cfg)


def _check_schedule(cfg: Config) -> None:
    """Warmup (and, for wsd, warmup + decay) must fit in train.steps (optim/schedule.py)."""
    steps, s = cfg.train.steps, cfg.sched
    # -1: the default of optim/schedule.py `default_warmup`, W = max(1, round(0.02·T))
    warmup = max(1, round(0.02 * steps)) if s.warmup_steps < 0 else s.warmup_steps
    decay = round(s.decay_frac * steps) if s.kind == "wsd" else 0
    if warmup + decay > steps:
        what = f"warmup ({warmup}) + decay ({decay}, sched.decay_frac = {s.decay_frac})" \
            if decay else f"warmup ({warmup})"
        raise ConfigError(f"sched.warmup_steps: {what} steps exceed train.steps = {steps}")


# Keys a resumed run may change: they steer how long it runs and what it logs, not the
# trajectory of the steps already taken (docs/RELIABILITY.md#resume).
RESUME_SAFE = {("train", k) for k in ("steps", "eval_every", "eval_batches", "log_every",
                                      "ckpt_every", "progress", "analysis", "tensorboard",
                                      "device", "max_skipped_steps", "out_dir", "compile")} \
    | {("data", "cache_dir")}


def check_resume(saved: Config, new: Config) -> None:
    """A one-line ConfigError naming every key `new` changes that is not in RESUME_SAFE."""
    before, after = saved.to_dict(), new.to_dict()
    changed = [f"{sec}.{key} ({before[sec][key]!r} -> {after[sec][key]!r})"
               for sec in after for key in after[sec]
               if before[sec][key] != after[sec][key] and (sec, key) not in RESUME_SAFE]
    if changed:
        safe = ", ".join(f"{s}.{k}" for s, k in sorted(RESUME_SAFE))
        raise ConfigError(f"--resume: cannot change {', '.join(changed)} of a run in progress "
                          f"(keys that may change: {safe})")


def _check_pipeline(cfg: Config) -> None:
    """parallel.pp / virtual_stages / microbatches (docs/DISTRIBUTED.md#pipeline-parallelism);
    the world size (= pp) and the model depth (2·n_layers >= pp·virtual_stages) are checked when
    the trainer starts."""
    par, batch = cfg.parallel, cfg.train.batch_size
    if par.microbatches < 0:
        raise ConfigError(f"parallel.microbatches must be >= 0 (0 = automatic), "
                          f"got {par.microbatches}")
    if par.pp > 1 and cfg.train.compile:
        raise ConfigError(f"train.compile applies to parallel.pp = 1 (pipeline stages run the "
                          f"layers' sublayers on their own), got parallel.pp = {par.pp}")
    if par.pp == 1:
        if par.virtual_stages != 1 or par.microbatches:
            raise ConfigError("parallel.virtual_stages and parallel.microbatches apply only to "
                              f"parallel.pp > 1, got pp = 1 (virtual_stages = "
                              f"{par.virtual_stages}, microbatches = {par.microbatches})")
        return
    if par.mode != "none":
        raise ConfigError(f"parallel.pp = {par.pp} cannot be combined with parallel.mode = "
                          f"{par.mode} in this build (no pipeline x data parallelism yet); use "
                          f"one of them")
    kind = cfg.residual.kind
    if kind not in ("prenorm", "full", "block") or cfg.residual.window:
        raise ConfigError(f"parallel.pp > 1 supports residual.kind prenorm, full or block without "
                          f"residual.window, got residual.kind = {kind}"
                          + (f", residual.window = {cfg.residual.window}" if cfg.residual.is_attnres else ""))
    m = par.pp_microbatches(batch)
    if m == 0:
        raise ConfigError(f"parallel.pp = {par.pp}, virtual_stages = 1: train.batch_size = "
                          f"{batch} must be >= pp to fill the 1F1B schedule")
    if batch % m:
        raise ConfigError(f"train.batch_size = {batch} is not divisible by parallel.microbatches "
                          f"= {m}")
    if not _schedule_accepts(m, par.pp, par.virtual_stages):
        need = (f"M >= pp = {par.pp}" if par.virtual_stages == 1 else
                f"M divisible by max(1, M // pp) = {max(1, m // par.pp)}")
        raise ConfigError(f"parallel.microbatches = {m} does not suit the "
                          f"{'interleaved ' if par.virtual_stages > 1 else ''}1F1B schedule "
                          f"(needs {need})")


def _check_read_variant(cfg: Config) -> None:
    """The Table-4 read options combine only where they mean something (heads | d_model is
    checked when the model is built, where d_model is known)."""
    r = cfg.residual
    if not r.is_attnres:
        return
    if r.window and r.kind != "full":
        raise ConfigError(f"residual.window = {r.window} applies only to residual.kind = full")
    if r.mixing == "static" and r.query != "static":
        raise ConfigError("residual.mixing = static has no query; residual.query must stay static")
    if r.mixing == "static" and r.heads != 1:
        raise ConfigError("residual.mixing = static has one logit per source; residual.heads must be 1")
    variant = (r.key_norm, r.kernel, r.query, r.mixing, r.window, r.heads) != \
        ("rms_gain", "softmax", "static", "attention", 0, 1)
    if variant and r.impl == "two_phase":
        raise ConfigError("residual.impl = two_phase supports only the default read; "
                          "use recompute (variants fall back to plain autograd)")


# --- building a Config from nested dicts, files and dotted overrides ------------------------

def from_dict(data: dict[str, Any], where: str = "config") -> Config:
    """Build a Config from a nested dict; unknown sections/keys are one-line errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of sections, got {type(data).__name__}")
    data = upgrade_residual(data)
    sections = {}
    for f in dataclasses.fields(Config):
        sections[f.name] = _SECTION_TYPES[f.name]
    kwargs = {}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"{where}: unknown section {name!r}{_suggest(name, sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {name!r} must be a table, got {values!r}")
        kwargs[name] = _build_section(sections[name], values, f"{where}: {name}")
    return Config(**kwargs)


def upgrade_residual(data: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before the one `residual` section (`residual.kind = attnres` plus an
    `attnres` section with `mode`) still load, so older run folders resume and report."""
    old = data.get("attnres")
    residual = data.get("residual")
    if not isinstance(old, dict) and not (isinstance(residual, dict)
                                          and residual.get("kind") == "attnres"):
        return data
    data, old, residual = dict(data), dict(old or {}), dict(residual or {})
    data.pop("attnres", None)
    kind = residual.get("kind", "prenorm")
    mode = old.pop("mode", "block")
    if kind == "attnres":
        kind = mode
    if old.get("impl") == "reference":
        old["impl"] = "naive"
    if kind != "block" or old.get("num_blocks"):
        old.pop("block_size", None)
    residual.update(old, kind=kind)
    data["residual"] = residual
    return data


def load(path: str | Path | None = None, overrides: list[str] | None = None,
         base: dict[str, Any] | None = None) -> Config:
    """Defaults < `base` (e.g. a preset's dict) < the file at `path` < `overrides` ("a.b=v")."""
    data: dict[str, Any] = _deep_copy(base or {})
    if path is not None:
        _merge(data, read_file(path))
    for item in overrides or []:
        section, key, value = _parse_override(item)
        data.setdefault(section, {})[key] = value
    return from_dict(data, where=str(path) if path else "config")


def read_file(path: str | Path) -> dict[str, Any]:
    """The sections of a TOML / YAML / JSON file. An empty file (or one with only comments) is
    an error rather than a silent run on the defaults: it is more often a truncated or wrong
    file than a wish (docs/RELIABILITY.md)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}); expected a "
                          f"TOML, YAML or JSON config") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    data = _parse(path, text)
    if data is None or data == {}:
        raise ConfigError(f"{path}: empty config file; leave out --config to train on the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of sections at the top level, got a "
                          f"{type(data).__name__}")
    return data


def _parse(path: Path, text: str) -> Any:
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml
            return yaml.safe_load(text)
        if path.suffix == ".json":
            return json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as err:
        raise ConfigError(f"{path}: cannot parse: {str(err).splitlines()[0]}") from None
    except Exception as err:  # yaml.YAMLError lives in an optional import
        raise ConfigError(f"{path}: cannot parse: {str(err).splitlines()[0]}") from None
    raise ConfigError(f"{path}: unknown config format {path.suffix!r} (use .toml, .yaml or .json)")


def _parse_override(item: str) -> tuple[str, str, Any]:
    key, sep, raw = item.partition("=")
    parts = key.strip().lstrip("-").split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {item!r} must look like section.key=value")
    return parts[0], parts[1], _Raw(raw.strip())


class _Raw(str):
    """A value given on the command line as text; converted by the field's type."""


_SECTION_TYPES = {f.name: f.default_factory().__class__ for f in dataclasses.fields(Config)}


def _build_section(cls, values: dict[str, Any], where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, names)}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def _convert(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if isinstance(value, _Raw):
        if typ is str:
            return str(value)
        try:
            value = json.loads(value) if value not in ("true", "false") else value == "true"
        except json.JSONDecodeError:
            if typ is bool:
                raise ConfigError(f"{where}: expected true or false, got {str(value)!r}") from None
            if typ is float and value.lower() in ("nan", "inf", "-inf", "+inf"):
                return float(value)  # read, so that `check` names the problem (not finite)
            raise ConfigError(f"{where}: cannot read {str(value)!r} as {_type_name(typ)}") from None
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_convert(v, a, where) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", str(typ))


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _merge(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = value


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}
