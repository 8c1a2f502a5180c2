"""attnres: Attention Residuals (Kimi Team, arXiv 2603.15031) in PyTorch.

The public API, importable from the top level (README, "Using AttnRes in your own model"):

- `depth_attention`: the op, one depth-softmax read over a list of sources.
- `ResidualConfig`, `Residual`: how each sublayer's input is formed (prenorm, full, block,
  denseformer, mhc) and the strategy object a model builds its reads and streams from.
- `DenseConfig` / `DenseLM` (Llama-style) and `KimiLinearConfig` / `KimiLinearLM` (KDA + MLA +
  MoE), with `dense_config(preset)` / `kimi_linear_config(preset)` for the presets.
- `Config`, `load_config`: the whole training config tree; `build_optimizer`: Muon + AdamW
  routed by parameter tag, the AttnRes reads at `residual.lr_mult` × the LR.
- `from_hf(path_or_model, residual=...)`: a Llama / Qwen3 / Kimi-Linear transformers checkpoint
  as an attnres model (`attnres.hf`, the `hf` extra); with transformers installed, `import
  attnres` also registers the `attnres_llama` / `attnres_kimi_linear` model types with
  `AutoConfig` / `AutoModelForCausalLM`.
"""

__version__ = "0.2.0"

from attnres.config import Config, ResidualConfig
from attnres.config import load as load_config
from attnres.layers.residual import Residual
from attnres.models.dense import DenseConfig, DenseLM, dense_config
from attnres.models.kimi_linear import KimiLinearConfig, KimiLinearLM, kimi_linear_config
from attnres.ops.attnres import depth_attention
from attnres.optim import build_optimizer
from attnres.hf import hook as _hf_hook

_hf_hook.install()


def from_hf(path_or_model, residual="prenorm", **kwargs):
    """A Llama / Qwen3 / Kimi-Linear transformers model (folder or instance) as an attnres
    transformers model with the given residual; see `attnres.hf.convert.from_hf`."""
    from attnres.hf.convert import from_hf as convert
    return convert(path_or_model, residual=residual, **kwargs)

__all__ = [
    "Config",
    "DenseConfig",
    "DenseLM",
    "KimiLinearConfig",
    "KimiLinearLM",
    "Residual",
    "ResidualConfig",
    "__version__",
    "build_optimizer",
    "dense_config",
    "depth_attention",
    "from_hf",
    "kimi_linear_config",
    "load_config",
]
