"""PNG plots of a comparison: loss curves, depth profiles and depth-attention maps; and of the
sweeps: loss vs compute (scaling) and loss vs block size (sweep)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"prenorm": "#444444", "full": "#d62728", "block": "#1f77b4"}


def _color(name: str, i: int) -> str:
    return COLORS.get(name, plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10])


def plot_loss_curves(runs: dict[str, list[dict]], path: Path, title: str) -> Path:
    """runs: variant -> list of metric histories (one per seed)."""
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, histories) in enumerate(runs.items()):
        for k, hist in enumerate(histories):
            train = [(r["step"], r["loss"]) for r in hist if "loss" in r]
            val = [(r["step"], r["val_loss"]) for r in hist if "val_loss" in r]
            label = name if k == 0 else None
            if train:
                s, v = zip(*train)
                ax_train.plot(s, _smooth(np.array(v)), color=_color(name, i), alpha=0.8, label=label)
            if val:
                s, v = zip(*val)
                ax_val.plot(s, v, "o-", color=_color(name, i), alpha=0.8, label=label, ms=3)
    ax_train.set(title="training loss (smoothed)", xlabel="step", ylabel="loss (nats/token)")
    ax_val.set(title="validation loss", xlabel="step", ylabel="loss (nats/token)")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_depth_profiles(analyses: dict[str, dict], path: Path, title: str) -> Path:
    """Per-sublayer output RMS, carried-state RMS, parameter gradient norm (cf. [AR] Fig. 5) and
    the RMS of the gradient reaching each sublayer's output (a sublayer starved by a saturated
    depth softmax shows here first)."""
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    panels = [("output_rms", "sublayer output RMS  RMS(v_l)", True),
              ("stream_rms", "carried state RMS after sublayer", True),
              ("grad_norm", "gradient norm of sublayer parameters", True),
              ("output_grad_rms", "gradient RMS reaching the output v_l", True)]
    for ax, (key, label, log) in zip(axes, panels):
        for i, (name, analysis) in enumerate(analyses.items()):
            values = [np.nan if v is None else v for v in analysis.get(key) or []]
            if not values:
                continue
            ax.plot(range(1, len(values) + 1), values, "o-", ms=3, color=_color(name, i), label=name)
        ax.set(title=label, xlabel="sublayer l")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_depth_attention(analysis: dict, path: Path, title: str) -> Path:
    """Mean depth-attention weights: rows are reads, columns sources (cf. [AR] Fig. 8).

    Pre-attention reads (odd l) and pre-MLP reads (even l) are shown separately, as the paper
    does; the final read closes the second map."""
    weights = analysis["depth_weights"]
    n_reads = len(weights)
    width = max(len(w) for w in weights)
    grid = np.full((n_reads, width), np.nan)
    for r, w in enumerate(weights):
        grid[r, :len(w)] = w
    mixer_rows = list(range(0, n_reads - 1, 2))
    ffn_rows = list(range(1, n_reads - 1, 2)) + [n_reads - 1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * n_reads + 2.5))
    source_label = "source (0 = embedding, i = v_i)" if analysis["block_size"] == 1 else \
        "source (0 = embedding, n = block b_n or the open partial)"
    for ax, rows, name in ((axes[0], mixer_rows, "before attention"), (axes[1], ffn_rows, "before MLP / final")):
        im = ax.imshow(grid[rows], vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([("final" if r == n_reads - 1 else f"l={r + 1}") for r in rows])
        ax.set_xticks(range(width))
        ax.set(title=name, xlabel=source_label)
        for yi, r in enumerate(rows):
            for xi, value in enumerate(grid[r]):
                if not np.isnan(value) and width <= 20:
                    ax.text(xi, yi, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if value < 0.5 else "black")
    fig.colorbar(im, ax=axes, shrink=0.8, label="mean weight")
    fig.suptitle(title)
    return _save(fig, path)


def plot_depth_trace(traces: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Saturation of the depth softmax over training, one column per arm: the mean weight on
    the embedding (top) and the normalised entropy H(p)/log n (bottom, 1 = uniform) of every
    read, coloured from the first read (dark) to the final read (light).

    traces: arm -> the run's "depth" metric records ({"step", "embedding_weight", "entropy"})."""
    names = [n for n, t in traces.items() if t]
    fig, axes = plt.subplots(2, max(1, len(names)), figsize=(5.5 * max(1, len(names)), 6.5),
                             squeeze=False, constrained_layout=True)
    for col, name in enumerate(names):
        records = sorted(traces[name], key=lambda r: r["step"])
        steps = [r["step"] for r in records]
        n_reads = len(records[0]["embedding_weight"])
        colors = plt.cm.viridis(np.linspace(0, 0.9, n_reads))
        for key, row, label in (("embedding_weight", 0, "mean weight on the embedding"),
                                ("entropy", 1, "entropy / log n (1 = uniform)")):
            ax = axes[row, col]
            for r in range(n_reads):
                values = [np.nan if rec[key][r] is None else rec[key][r] for rec in records]
                if not np.all(np.isnan(values)):
                    ax.plot(steps, values, color=colors[r], lw=1,
                            label=("final" if r == n_reads - 1 else f"l={r + 1}"))
            ax.set(title=f"{name}: {label}", xlabel="step" if row else None, ylim=(0, 1.02))
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=6, ncol=2)
    fig.suptitle(title)
    return _save(fig, path)


def plot_expert_load(runs: dict[str, list[dict]], path: Path, title: str) -> Path:
    """MoE balance: MaxVio per layer over training (one panel per arm) and each expert's share
    of the assignments in the last logged window (rows: layers, columns: experts)."""
    names = list(runs)
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        records = runs[name]
        layers = list(records[-1]["layers"])
        ax = axes[0, col]
        for layer in layers:
            steps = [r["step"] for r in records if layer in r["layers"]]
            ax.plot(steps, [r["layers"][layer]["max_vio"] for r in records if layer in r["layers"]],
                    label=layer.replace("layers.", "L").replace(".mlp", ""))
        ax.set(title=f"{name}: MaxVio = max load / mean − 1", xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        load = np.array([records[-1]["layers"][layer]["load"] for layer in layers])
        ax = axes[1, col]
        im = ax.imshow(load, aspect="auto", cmap="magma", vmin=0)
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels([layer.replace("layers.", "L").replace(".mlp", "") for layer in layers])
        ax.set(title=f"{name}: expert share, last window (uniform = {1 / load.shape[1]:.3f})",
               xlabel="expert")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_scaling(points: dict[str, list[tuple[float, float]]], fits: dict[str, tuple[float, float]],
                 path: Path, title: str) -> Path:
    """Validation loss vs compute on log-log axes (cf. [AR] Fig. 4): one dot per run, the
    per-compute mean as a ring, and each arm's fit L = A·C^(−α) as a line.

    points: arm -> (C in PFLOP/s-days, loss) per run; fits: arm -> (A, alpha)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    all_c = [c for pts in points.values() for c, _ in pts]
    for i, (name, pts) in enumerate(points.items()):
        color = _color(name, i)
        c, loss = np.array(pts, dtype=float).T
        ax.scatter(c, loss, s=12, alpha=0.4, color=color)
        means = {x: loss[c == x].mean() for x in np.unique(c)}
        ax.scatter(list(means), list(means.values()), s=40, facecolors="none", edgecolors=color)
        label = name
        if name in fits and all_c:
            A, alpha = fits[name]
            grid = np.geomspace(min(all_c) / 1.3, max(all_c) * 1.3, 100)
            ax.plot(grid, A * grid ** -alpha, color=color, lw=1.2)
            label = f"{name}: {A:.3f}·C$^{{-{alpha:.4f}}}$"
        ax.plot([], [], "o-", color=color, label=label)
    ax.set(xscale="log", yscale="log", xlabel="training compute C (PFLOP/s-days)",
           ylabel="validation loss (nats/token)", title=title)
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def plot_block_sweep(sizes: dict[int, list[float]], baseline: list[float], path: Path, title: str,
                     paper: tuple[dict[int, float], float] | None = None) -> Path:
    """Validation loss vs block size S (cf. [AR] Fig. 6): one dot per seed, the mean ± sd over
    seeds as a line, the baseline's mean as a horizontal line with its ± sd band.

    sizes: S -> val loss per seed; baseline: val loss per seed; paper: ({S: loss}, baseline
    loss), drawn in a second panel."""
    panels = [("this run", sizes, baseline)]
    if paper is not None:
        panels.append(("[AR] Fig. 6 (436M model, read from the figure)",
                       {k: [v] for k, v in paper[0].items()}, [paper[1]]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (name, points, base) in zip(axes[0], panels):
        ks = sorted(points)
        means = np.array([np.mean(points[k]) for k in ks])
        sds = np.array([np.std(points[k], ddof=1) if len(points[k]) > 1 else 0.0 for k in ks])
        for k in ks:
            ax.scatter([k] * len(points[k]), points[k], s=12, alpha=0.4, color=COLORS["block"])
        ax.errorbar(ks, means, yerr=sds, fmt="o-", ms=4, capsize=3, color=COLORS["block"],
                    label="Block AttnRes (S = 1: Full)")
        if base:
            mean = float(np.mean(base))
            ax.axhline(mean, color=COLORS["prenorm"], ls="--", lw=1.2, label="baseline (PreNorm)")
            if len(base) > 1:
                sd = float(np.std(base, ddof=1))
                ax.axhspan(mean - sd, mean + sd, color=COLORS["prenorm"], alpha=0.12, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set(title=name, xlabel="block size S (sublayers per block)",
               ylabel="validation loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def _smooth(v: np.ndarray, frac: float = 0.05) -> np.ndarray:
    k = max(1, int(len(v) * frac))
    if k == 1:
        return v
    kernel = np.ones(k) / k
    padded = np.concatenate([np.full(k - 1, v[0]), v])
    return np.convolve(padded, kernel, mode="valid")


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
