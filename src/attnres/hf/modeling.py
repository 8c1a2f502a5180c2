"""attnres models as transformers `PreTrainedModel`s: `AttnResLlamaForCausalLM` (the dense
backbone) and `AttnResKimiLinearForCausalLM` (KDA + MLA + MoE).

The forward is our model itself (`DenseLM` / `KimiLinearLM`, held as `self.model`); a class only
adapts the interface: transformers' argument names, `CausalLMOutputWithPast`, safetensors
`save_pretrained` / `from_pretrained`, and `generate()` through our own decoding cache
(docs/HF.md#generate-and-the-cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from attnres.hf.configuration import AttnResKimiLinearConfig, AttnResLlamaConfig
from attnres.models.decoder import DecoderCache
from attnres.models.dense import DenseLM
from attnres.models.kimi_linear import KimiLinearLM


class AttnResCache:
    """The generation cache: our `DecoderCache` (per-layer keys and values) in the place
    transformers keeps its `Cache`. It is not a `transformers.Cache`: generate() only hands it
    back to `prepare_inputs_for_generation`, which feeds the tokens it has not seen yet."""

    is_linear = (True,)  # generate() must not slice inputs by a KV length; we do it ourselves

    def __init__(self, decoder: DecoderCache):
        self.decoder = decoder
        self.padded = False  # True once a left-padded mask was handed to its layers

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.decoder.length


def needs_padding_mask(mask: torch.Tensor | None) -> bool:
    """Whether `mask` [B, S] hides tokens that real ones come after (left padding). None, all
    ones and padding only on the right need nothing: under causal attention a position after
    every real one cannot change them."""
    if mask is None or bool(mask.all()):
        return False
    mask = mask.bool()
    return bool((mask[:, 1:] & ~mask[:, :-1]).any())


class AttnResPreTrainedModel(PreTrainedModel):
    """What both backbones share; a subclass names its config class and `backbone`, and lists
    GenerationMixin among its own bases (transformers looks for it there)."""

    backbone: type = DenseLM
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DecoderLayer"]
    _tied_weights_keys = {"model.lm_head.weight": "model.embed_tokens.weight"}
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        self.model = self.backbone(config.to_model_config())
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Our models initialise their own weights at construction; only what transformers may
        leave uninitialised after a meta-device load is set here: the non-persistent buffers
        (QK-Clip's running max, the MoE's assignment counts)."""
        if isinstance(getattr(module, "max_logit", None), torch.Tensor):
            module.max_logit.fill_(float("-inf"))
        if isinstance(getattr(module, "counts", None), torch.Tensor):
            module.counts.zero_()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model.restore_tags()
        return model

    def restore_tags(self) -> None:
        """transformers loads weights into new Parameter objects, which lack the attributes
        our optimizer routing reads (`attnres.tags`); copy them from a meta-device twin."""
        with torch.device("meta"):
            twin = self.backbone(self.model.cfg)
        tagged = dict(twin.named_parameters(remove_duplicate=False))
        for name, p in self.model.named_parameters(remove_duplicate=False):
            p.__dict__.update({k: v for k, v in tagged[name].__dict__.items()
                               if k.startswith("_attnres_")})

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() gets our cache from prepare_inputs_for_generation

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.model.lm_head = value

    def _with_padding(self, mask: torch.Tensor | None, cache: AttnResCache | None, T: int):
        """Hand a left-padded mask to every attention layer (through its KV cache, a fresh one
        for a forward without a cache): positions then count real tokens only, and no real
        token attends to padding. The KDA and MLA mixers take no mask: a one-line error."""
        if not isinstance(self.model, DenseLM):
            raise ValueError(f"attnres: attention_mask with left padding is not supported by the "
                             f"{type(self.model).__name__} backbone; pad on the right or "
                             f"generate one prompt at a time")
        cache = cache if cache is not None else AttnResCache(self.model.new_cache())
        seen = cache.get_seq_length()
        if mask is None or mask.shape[1] != seen + T:
            raise ValueError(f"attnres: attention_mask covers {None if mask is None else mask.shape[1]} "
                             f"tokens; a padded batch needs one entry per token seen ({seen + T})")
        for layer_cache in cache.decoder.layers:
            layer_cache.valid = mask.bool()
        cache.padded = True
        return cache

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, cache: AttnResCache | None = None,
                                      attention_mask: torch.Tensor | None = None,
                                      use_cache: bool = True, **kwargs) -> dict:
        if use_cache and cache is None:
            cache = AttnResCache(self.model.new_cache())
        if cache is not None:
            input_ids = input_ids[:, cache.get_seq_length():]
        return {"input_ids": input_ids, "cache": cache, "attention_mask": attention_mask,
                "use_cache": use_cache}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: AttnResCache | None = None, labels: torch.Tensor | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        """input_ids [B, T] -> logits [B, T, V]; with labels [B, T], the mean next-token loss
        (labels shifted inside, -100 ignored, as in transformers)."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("attnres: inputs_embeds is not supported; pass input_ids")
        if needs_padding_mask(attention_mask) or (cache is not None and cache.padded):
            cache = self._with_padding(attention_mask, cache, input_ids.shape[1])
        logits = self.model(input_ids, cache=cache.decoder if cache is not None else None)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)


class AttnResLlamaForCausalLM(AttnResPreTrainedModel, GenerationMixin):
    config_class = AttnResLlamaConfig
    backbone = DenseLM


class AttnResKimiLinearForCausalLM(AttnResPreTrainedModel, GenerationMixin):
    config_class = AttnResKimiLinearConfig
    backbone = KimiLinearLM
