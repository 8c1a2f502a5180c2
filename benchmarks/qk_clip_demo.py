"""QK-Clip demo: a tiny MLA + GQA model trained with Muon at a high LR, once without and once with
QK-Clip (docs/OPTIM.md#qk-clip). Prints the per-step max attention logit of both runs as a markdown
table and plots both curves with τ marked (the setup of tests/optim/test_qk_clip.py, shared via
attnres.bench.qk_clip)."""

import argparse
from pathlib import Path

import torch

from attnres.bench.qk_clip import train_max_logits


def markdown_table(free: list[float], held: list[float], tau: float, every: int) -> str:
    steps = sorted(set(range(every, len(free) + 1, every)) | {1, len(free)})
    lines = [f"| step | max logit, no clip | max logit, QK-Clip τ = {tau:g} |", "|---:|---:|---:|"]
    lines += [f"| {s} | {free[s - 1]:.2f} | {held[s - 1]:.2f} |" for s in steps]
    return "\n".join(lines)


def plot(free: list[float], held: list[float], tau: float, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = range(1, len(free) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(steps, free, label="no clip")
    ax.plot(steps, held, label="QK-Clip")
    ax.axhline(tau, color="gray", linestyle="--", linewidth=1, label=f"τ = {tau:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("max attention logit (all layers, heads)")
    ax.set_title("QK-Clip on a tiny MLA + GQA model (Muon)")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--tau", type=float, default=3.0, help="QK-Clip threshold τ")
    p.add_argument("--lr", type=float, default=1e-2, help="Muon/AdamW learning rate")
    p.add_argument("--every", type=int, default=10, help="table row every k-th step")
    p.add_argument("--out", default="runs/qk_clip_demo.png", help="PNG plot of both curves")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    free, _ = train_max_logits(clip=False, tau=a.tau, steps=a.steps, lr=a.lr)
    held, n_clipped = train_max_logits(clip=True, tau=a.tau, steps=a.steps, lr=a.lr)
    free_max, held_max = free.amax(dim=(1, 2)).tolist(), held.amax(dim=(1, 2)).tolist()
    print(markdown_table(free_max, held_max, a.tau, a.every))
    print(f"\npeak: no clip {max(free_max):.2f}, QK-Clip {max(held_max):.2f} "
          f"(τ = {a.tau:g}, {n_clipped} clipped head-steps, {a.steps} steps, lr {a.lr:g})")
    plot(free_max, held_max, a.tau, Path(a.out))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
