"""`attnres report DIR`: markdown tables rebuilt from the raw per-run JSON files under DIR.

Every experiment saves one JSON object per run, holding at least `experiment`, `group` (e.g. a
model size or an ablation), `arm` and `seed` plus its measurements (`val_loss`, `val_bpb`,
`tokens_per_s`, `peak_rss_mb`, `wall_s`). `load_runs` collects them from any depth below a
folder, so `results/` holds `results/scaling/...` beside, later, `results/ablate/...`.

The tables are generic (`mean_sd_table`: mean ± sd over seeds per group and arm, with the
paired difference to the baseline of the same seed). An experiment with more to say registers a
renderer in `RENDERERS`; `scaling` adds its ladder, the power-law fits, the compute advantage
and a plot. Experiments without one get the generic table.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnres.experiments import fit

KEYS = ("experiment", "group", "arm", "seed")
ARM_ORDER = ("baseline", "full", "block")
COLUMNS = (("val_loss", "val loss", ".4f"), ("val_bpb", "val bpb", ".4f"),
           ("tokens_per_s", "tokens/s", ",.0f"), ("peak_rss_mb", "peak RSS (MB)", ",.0f"),
           ("wall_s", "wall (s)", ",.0f"))


class ReportError(ValueError):
    """A results folder that cannot be read; the message names the file."""


# --- generic: loading, grouping, mean ± sd ---------------------------------------------------

def load_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every per-run JSON below `root` (files lacking the four keys, e.g. summaries, are
    skipped), sorted by experiment, group size, arm and seed."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such results folder")
    runs = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict) and all(k in data for k in KEYS):
            runs.append(dict(data, path=str(path)))
    # groups by size where runs record it (smallest model first), else by name
    size: dict[tuple, float] = {}
    for r in runs:
        key = (r["experiment"], r["group"])
        size[key] = min(size.get(key, math.inf), r.get("params_compute", 0))
    return sorted(runs, key=lambda r: (r["experiment"], size[(r["experiment"], r["group"])],
                                       str(r["group"]), _arm_rank(r["arm"]), r["seed"]))


def _arm_rank(arm: str) -> tuple[int, str]:
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm)


def group_runs(runs: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, list[dict[str, Any]]]:
    """Runs by the values of `keys`, in the order first met (load_runs sorts)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in keys), []).append(run)
    return groups


def mean_sd(values: list[float]) -> tuple[float, float, int]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return mean, sd, len(values)


def format_mean_sd(values: list[float], spec: str, signed: bool = False) -> str:
    if not values:
        return "—"
    mean, sd, _ = mean_sd(values)
    text = format(mean, ("+" if signed else "") + spec)
    return text if math.isnan(sd) else f"{text} ± {format(sd, spec)}"


def paired_deltas(runs: list[dict[str, Any]], key: str = "val_loss",
                  reference: str = "baseline") -> dict[tuple, list[float]]:
    """(experiment, group, arm) -> arm − reference per seed, for the seeds both ran."""
    ref = {(r["experiment"], r["group"], r["seed"]): r[key] for r in runs if r["arm"] == reference}
    out: dict[tuple, list[float]] = {}
    for r in runs:
        base = ref.get((r["experiment"], r["group"], r["seed"]))
        if r["arm"] != reference and base is not None:
            out.setdefault((r["experiment"], r["group"], r["arm"]), []).append(r[key] - base)
    return out


def mean_sd_table(runs: list[dict[str, Any]], group_keys: tuple[str, ...] = ("group", "arm"),
                  columns=COLUMNS, reference: str = "baseline") -> str:
    """One row per group: seeds, mean ± sd of each column and the paired Δ val loss."""
    deltas = paired_deltas(runs, key=columns[0][0], reference=reference)
    head = [*group_keys, "seeds", columns[0][1], f"Δ vs {reference} (paired)",
            *(c[1] for c in columns[1:])]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(group_keys) + "---:|" * (len(head) - len(group_keys))]
    for values, group in group_runs(runs, group_keys).items():
        first = group[0]
        delta = deltas.get((first["experiment"], first["group"], first["arm"]), [])
        cells = [str(v) for v in values] + [",".join(str(r["seed"]) for r in group)]
        cells.append(format_mean_sd([r[columns[0][0]] for r in group if columns[0][0] in r], columns[0][2]))
        cells.append(format_mean_sd(delta, ".4f", signed=True) if first["arm"] != reference else "—")
        cells += [format_mean_sd([r[key] for r in group if key in r], spec) for key, _, spec in columns[1:]]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render_generic(runs: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    return "\n".join([f"## Experiment `{runs[0]['experiment']}`", "", mean_sd_table(runs), ""])


# --- scaling: ladder, fits, compute advantage -------------------------------------------------

def scaling_summary(runs: list[dict[str, Any]], n_boot: int = 2000) -> dict[str, Any]:
    """Fits L = A·C^(−α) per arm on the per-size means over seeds, and each arm's compute
    multiplier over the baseline at the largest baseline budget, with a seed bootstrap."""
    runs = [r for r in runs if r["experiment"] == "scaling"]
    sizes = list(group_runs(runs, ("group",)))
    sizes = [s[0] for s in sizes]
    by_arm = group_runs(runs, ("arm",))
    summary: dict[str, Any] = {"sizes": sizes, "fits": {}, "advantage": {}}
    points: dict[str, dict[str, dict[int, tuple[float, float]]]] = {}
    for (arm,), arm_runs in by_arm.items():
        per_size: dict[str, dict[int, tuple[float, float]]] = {}
        for r in arm_runs:
            per_size.setdefault(r["group"], {})[r["seed"]] = (r["compute_pfs_days"], r["val_loss"])
        points[arm] = per_size
        C = [statistics.fmean(c for c, _ in seeds.values()) for seeds in per_size.values()]
        L = [statistics.fmean(v for _, v in seeds.values()) for seeds in per_size.values()]
        entry = {"sizes": list(per_size), "C": C, "L": L, "seeds": sorted({r["seed"] for r in arm_runs})}
        if len(set(C)) >= 2:
            A, alpha = fit.fit_power_law(C, L)
            entry.update(A=A, alpha=alpha)
        summary["fits"][arm] = entry
    base = summary["fits"].get("baseline")
    if not base or "A" not in base:
        return summary
    C0 = max(base["C"])
    for arm, entry in summary["fits"].items():
        if arm == "baseline" or "A" not in entry:
            continue
        with np.errstate(all="ignore"):
            loss_var = float(fit.loss_at(entry["A"], entry["alpha"], C0))
            adv = {"C0": C0, "loss_baseline": float(fit.loss_at(base["A"], base["alpha"], C0)),
                   "loss_variant": loss_var,
                   "compute_baseline": float(fit.compute_for_loss(base["A"], base["alpha"], loss_var)),
                   "multiplier": fit.advantage((base["A"], base["alpha"]), (entry["A"], entry["alpha"]), C0)}
            boot = _bootstrap(points["baseline"], points[arm], C0, n_boot)
        if boot is not None:
            adv["bootstrap"] = boot
        summary["advantage"][arm] = adv
    return summary


def _bootstrap(base: dict[str, dict[int, tuple[float, float]]],
               variant: dict[str, dict[int, tuple[float, float]]], C0: float,
               n_boot: int) -> dict[str, float] | None:
    """Seed bootstrap on the sizes and seeds both arms completed (a rectangular table)."""
    seeds = set.intersection(*(set(s) for s in (*base.values(), *variant.values())))
    sizes = [g for g in base if g in variant]
    if len(seeds) < 2 or len(sizes) < 2:
        return None
    base_by_seed = {k: [base[g][k] for g in sizes] for k in sorted(seeds)}
    var_by_seed = {k: [variant[g][k] for g in sizes] for k in sorted(seeds)}
    return fit.bootstrap_advantage(base_by_seed, var_by_seed, C0, n_boot=n_boot)


def render_scaling(runs: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    summary = summary or scaling_summary(runs)
    first = runs[0]
    seeds = sorted({r["seed"] for r in runs})
    lines = ["## Scaling ladder (experiment `scaling`)", "",
             f"Dense backbone, corpus `{first.get('corpus', '?')}`, {first['batch_size']} × "
             f"{first['seq_len']} tokens per step, peak LR {first.get('lr', '?')}, seeds {seeds}. "
             f"Hardware: {first.get('hardware', '?')}.", "",
             "Compute C = 6·N_c·D, where N_c counts every non-embedding parameter including the LM "
             "head (its matmul is compute; the embedding lookup is not), D the trained tokens; "
             "1 PFLOP/s-day = 8.64e19 FLOPs. N (AR) = N_c − d·V is the [AR]-style count.", "",
             "| size | d | layers | heads | d_ff | Block S | N (AR) | N_c | steps | tokens | C (PFLOP/s-days) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (size,), group in group_runs([r for r in runs if r["arm"] == "baseline"] or runs, ("group",)).items():
        r = group[0]
        block = next((x["block_size"] for x in runs if x["group"] == size and x["arm"] == "block"), None)
        lines.append(f"| {size} | {r['d_model']} | {r['n_layers']} | {r['n_heads']} | {r['d_ff']} | "
                     f"{block if block is not None else '—'} | {r['params_non_embedding_ar']:,} | "
                     f"{r['params_compute']:,} | {r['steps']:,} | {r['tokens']:,} | "
                     f"{r['compute_pfs_days']:.3e} |")
    lines += ["", "Final validation loss (nats/token) per size and arm, mean ± sd over seeds; Δ pairs "
              "each seed with the baseline of the same seed (same backbone initialisation and data "
              "order).", "", mean_sd_table(runs), ""]
    resumed = [r for r in runs if r.get("resumed_from_step")]
    if resumed:
        lines += [f"{len(resumed)} run(s) resumed from a checkpoint: their wall time and tokens/s "
                  "cover the last segment only.", ""]
    lines += ["### Fits L = A·C^(−α) (C in PFLOP/s-days, per-size means over seeds)", "",
              "| arm | A | α | sizes |", "|---|---:|---:|---:|"]
    for arm, entry in summary["fits"].items():
        if "A" in entry:
            lines.append(f"| {arm} | {entry['A']:.4f} | {entry['alpha']:.4f} | {len(entry['C'])} |")
        else:
            lines.append(f"| {arm} | — | — | {len(entry['C'])} (a fit needs ≥ 2) |")
    lines.append("")
    if summary["advantage"]:
        lines += ["### Compute advantage over the baseline at the largest budget", "",
                  "adv(C0) = C_base(L_var(C0)) / C0 from the fits ([AR] §5.1, targets.md A2).", "",
                  "| arm | C0 | L_base(C0) | L_arm(C0) | baseline compute for L_arm | advantage | bootstrap interval |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for arm, adv in summary["advantage"].items():
            boot = adv.get("bootstrap")
            interval = (f"{boot['low']:.3f}–{boot['high']:.3f} ({boot['level']:.0%}, {boot['n_seeds']} "
                        f"seeds resampled)" if boot else "— (needs ≥ 2 seeds)")
            lines.append(f"| {arm} | {adv['C0']:.3e} | {adv['loss_baseline']:.4f} | {adv['loss_variant']:.4f} | "
                         f"{adv['compute_baseline']:.3e} | {adv['multiplier']:.2f}× ({adv['multiplier']:.3f}) | "
                         f"{interval} |")
        lines += ["", "With few seeds the bootstrap has few distinct resamples (3 for 2 seeds): read "
                  "the interval as a rough spread, not a calibrated confidence interval.", ""]
    lines += ["![loss vs compute](scaling.png)", ""]
    return "\n".join(lines)


# experiment -> (summary of its runs, saved in summary.json; markdown from runs and summary)
Summariser = Callable[[list[dict[str, Any]]], dict[str, Any]]
Renderer = Callable[[list[dict[str, Any]], dict[str, Any] | None], str]
RENDERERS: dict[str, tuple[Summariser | None, Renderer]] = {
    "scaling": (scaling_summary, render_scaling),
}


@dataclass
class Report:
    markdown: str
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def build_report(root: str | Path) -> Report:
    runs = load_runs(root)
    if not runs:
        raise ReportError(f"{root}: no per-run result JSON files below this folder")
    parts = ["# Results", "", f"Rebuilt from {len(runs)} per-run JSON files under `{root}`.", ""]
    summaries = {}
    for (experiment,), group in group_runs(runs, ("experiment",)).items():
        summarise, render = RENDERERS.get(experiment, (None, render_generic))
        summary = summarise(group) if summarise else None
        if summary is not None:
            summaries[experiment] = summary
        parts.append(render(group, summary))
    return Report("\n".join(parts), summaries)


def write_report(root: str | Path) -> Report:
    """Rebuild `report.md`, `summary.json` and, for a scaling sweep, `scaling.png` in `root`."""
    from attnres.experiments import plots
    root = Path(root)
    rep = build_report(root)
    (root / "report.md").write_text(rep.markdown)
    (root / "summary.json").write_text(json.dumps(rep.summaries, indent=2))
    rep.files += [root / "report.md", root / "summary.json"]
    scaling = rep.summaries.get("scaling")
    if scaling:
        runs = [r for r in load_runs(root) if r["experiment"] == "scaling"]
        points = {arm: [(r["compute_pfs_days"], r["val_loss"]) for r in group]
                  for (arm,), group in group_runs(runs, ("arm",)).items()}
        fits = {arm: (e["A"], e["alpha"]) for arm, e in scaling["fits"].items() if "A" in e}
        rep.files.append(plots.plot_scaling(points, fits, root / "scaling.png",
                                            "validation loss vs training compute (dense ladder)"))
    return rep
