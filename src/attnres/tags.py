"""Parameter tags, set where parameters are created: optimizer group and initialisation owner.

Routing parameters to Muon or AdamW by name patterns breaks silently when a module is renamed;
a tag set at creation time cannot. `attnres.optim` reads the tags; nothing here imports torch.
"""

MUON = "muon"                      # 2-D hidden matrices, 3-D expert stacks (per-expert Muon)
ADAMW = "adamw"                    # embeddings, head, norm gains, conv filters (weight decay on)
ADAMW_NO_DECAY = "adamw_no_decay"  # KDA A_log / dt_bias, DenseFormer / mHC mixing (weight decay 0)
# AttnRes read parameters (pseudo-queries, key-norm gains, every read variant's parameters):
# AdamW without weight decay at the global LR times `residual.lr_mult` (docs/DESIGN.md).
ATTNRES = "attnres"

GROUPS = (MUON, ADAMW, ADAMW_NO_DECAY, ATTNRES)
_ATTR = "_attnres_optim_group"


def set_group(param, group: str):
    """Tag `param` for optimizer `group`; returns the parameter so it can wrap a constructor."""
    if group not in GROUPS:
        raise ValueError(f"unknown optimizer group {group!r}; expected one of {GROUPS}")
    setattr(param, _ATTR, group)
    return param


def get_group(param) -> str | None:
    return getattr(param, _ATTR, None)


# A second tag: parameters whose layer initialises them itself (KDA's decay parameters, conv
# filters), which a model-wide re-initialisation must leave alone.
_OWN_INIT = "_attnres_own_init"


def keep_init(param):
    setattr(param, _OWN_INIT, True)
    return param


def has_own_init(param) -> bool:
    return getattr(param, _OWN_INIT, False)
