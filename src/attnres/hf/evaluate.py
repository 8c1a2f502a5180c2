"""`python -m attnres.hf.evaluate ...`: lm-evaluation-harness's command line (the `lm_eval`
arguments, unchanged) in a process where `attnres_llama` is registered, so
`--model hf --model_args pretrained=DIR` loads AttnRes folders too (docs/HF.md#evaluate).
A prenorm model exported with `attnres convert --to-hf` needs none of this: plain `lm_eval`."""

from attnres.hf import hook


def main() -> None:
    hook.install()
    from lm_eval.__main__ import cli_evaluate
    cli_evaluate()


if __name__ == "__main__":
    main()
