"""Registers `attnres_llama` and `attnres_kimi_linear` with transformers' Auto classes without importing transformers.

`import attnres` calls `install()`. Importing transformers' model classes costs seconds, which
every `attnres` command would pay, so registration waits until transformers' own Auto modules
are imported (a post-import hook on `sys.meta_path`): `AutoConfig` gets our config once
`configuration_auto` has loaded, `AutoModelForCausalLM` our model once `modeling_auto` has.
Either way it happens before the user's first `from_pretrained` (docs/HF.md#auto-registration).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODEL_AUTO = "transformers.models.auto.modeling_auto"


def register_config() -> None:
    from transformers import AutoConfig

    from attnres.hf.configuration import AttnResKimiLinearConfig, AttnResLlamaConfig
    for config in (AttnResLlamaConfig, AttnResKimiLinearConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)


def register_model() -> None:
    from transformers import AutoModelForCausalLM

    from attnres.hf.modeling import AttnResKimiLinearForCausalLM, AttnResLlamaForCausalLM
    register_config()
    for model in (AttnResLlamaForCausalLM, AttnResKimiLinearForCausalLM):
        AutoModelForCausalLM.register(model.config_class, model, exist_ok=True)


_ON_LOAD = {CONFIG_AUTO: register_config, MODEL_AUTO: register_model}


class _RegisterAfterLoad(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the two Auto modules through the other finders, then registers after they run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _ON_LOAD:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                self._loaders = getattr(self, "_loaders", {})
                self._loaders[fullname] = spec.loader
                spec.loader = self
                return spec
        return None

    def create_module(self, spec):
        return self._loaders[spec.name].create_module(spec)

    def exec_module(self, module):
        self._loaders[module.__name__].exec_module(module)
        _ON_LOAD[module.__name__]()


def install() -> None:
    """Register now for the Auto modules already loaded; hook the others. A no-op without
    transformers installed."""
    try:
        if importlib.util.find_spec("transformers") is None:
            return
    except (ImportError, ValueError, AttributeError):  # blocked or half-imported: leave it
        return
    if any(isinstance(f, _RegisterAfterLoad) for f in sys.meta_path):
        return
    for name in (CONFIG_AUTO, MODEL_AUTO):
        if name in sys.modules:
            _ON_LOAD[name]()
    if MODEL_AUTO not in sys.modules:
        sys.meta_path.insert(0, _RegisterAfterLoad())
