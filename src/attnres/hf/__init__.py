"""attnres models as transformers models, and conversion from / to transformers checkpoints
(docs/HF.md). Needs the `hf` extra (`pip install attnres[hf]`); nothing here imports
transformers until it is used, so `import attnres` stays fast and works without it.

- `AttnResLlamaConfig` / `AttnResLlamaForCausalLM` (`attnres_llama`, the dense backbone) and
  `AttnResKimiLinearConfig` / `AttnResKimiLinearForCausalLM` (`attnres_kimi_linear`),
  registered with `AutoConfig` / `AutoModelForCausalLM` (by `attnres.hf.hook` on `import attnres`).
- `from_hf(path_or_model, residual=...)`: a Llama / Qwen3 / Kimi-Linear checkpoint as an
  attnres model.
- `to_hf(model, out)`: a prenorm model as a plain transformers folder, an AttnRes one as
  `attnres_llama`.
"""

from __future__ import annotations

_LAZY = {"AttnResLlamaConfig": "configuration", "AttnResLlamaForCausalLM": "modeling",
         "AttnResKimiLinearConfig": "configuration", "AttnResKimiLinearForCausalLM": "modeling",
         "from_hf": "convert", "to_hf": "convert", "ConversionError": "convert"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'attnres.hf' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"attnres.hf.{_LAZY[name]}"), name)
