"""`attnres report DIR`: markdown tables rebuilt from the raw per-run JSON files under DIR.

Every experiment saves one JSON object per run, holding at least `experiment`, `group` (e.g. a
model size or an ablation), `arm` and `seed` plus its measurements (`val_loss`, `val_bpb`,
`tokens_per_s`, `peak_rss_mb`, `wall_s`). `load_runs` collects them from any depth below a
folder, so `results/` holds `results/scaling/...` beside, later, `results/ablate/...`.

The tables are generic (`mean_sd_table`: mean ± sd over seeds per group and arm, with the
paired difference to the baseline of the same seed). An experiment with more to say registers a
renderer in `RENDERERS`; `scaling` adds its ladder, the power-law fits, the compute advantage
and a plot; `ablate` and `sweep` (Table 4, Fig. 6) add the paper's values beside ours, the
[D] orderings judged on paired seeds and, for the sweep, a plot of loss vs S. Experiments
without one get the generic table.
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
from attnres.experiments.paper import PAPER_BASELINE, PAPER_SWEEP, TABLE4

KEYS = ("experiment", "group", "arm", "seed")
ARM_ORDER = ("prenorm", "full", "block")
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
            if data["arm"] == "baseline":  # records saved before the arms took kind names
                data["arm"] = "prenorm"
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
                  reference: str = "prenorm") -> dict[tuple, list[float]]:
    """(experiment, group, arm) -> arm − reference per seed, for the seeds both ran."""
    ref = {(r["experiment"], r["group"], r["seed"]): r[key] for r in runs if r["arm"] == reference}
    out: dict[tuple, list[float]] = {}
    for r in runs:
        base = ref.get((r["experiment"], r["group"], r["seed"]))
        if r["arm"] != reference and base is not None:
            out.setdefault((r["experiment"], r["group"], r["arm"]), []).append(r[key] - base)
    return out


def mean_sd_table(runs: list[dict[str, Any]], group_keys: tuple[str, ...] = ("group", "arm"),
                  columns=COLUMNS, reference: str = "prenorm") -> str:
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
    summary: dict[str, Any] = {"sizes": sizes, "fits": {}, "advantage": {}, "depth": depth_summary(runs)}
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
    base = summary["fits"].get("prenorm")
    if not base or "A" not in base:
        return summary
    C0 = max(base["C"])
    for arm, entry in summary["fits"].items():
        if arm == "prenorm" or "A" not in entry:
            continue
        with np.errstate(all="ignore"):
            loss_var = float(fit.loss_at(entry["A"], entry["alpha"], C0))
            adv = {"C0": C0, "loss_baseline": float(fit.loss_at(base["A"], base["alpha"], C0)),
                   "loss_variant": loss_var,
                   "compute_baseline": float(fit.compute_for_loss(base["A"], base["alpha"], loss_var)),
                   "multiplier": fit.advantage((base["A"], base["alpha"]), (entry["A"], entry["alpha"]), C0)}
            boot = _bootstrap(points["prenorm"], points[arm], C0, n_boot)
        if boot is not None:
            adv["bootstrap"] = boot
        summary["advantage"][arm] = adv
    return summary


DEPTH_COLUMNS = (("stream_growth", "stream RMS L/1", ".1f"), ("stream_increasing", "stream grows", ".0%"),
                 ("output_growth", "RMS(v) L/1", ".2f"), ("grad_spread", "grad max/min", ".1f"),
                 ("grad_early", "grad 1st quarter/rest", ".2f"), ("locality", "reads peaked on latest", ".0%"),
                 ("latest_mixer", "w(latest) pre-mixer", ".2f"), ("latest_ffn", "w(latest) pre-FFN", ".2f"),
                 ("embedding_mixer", "w(emb) pre-mixer", ".2f"), ("embedding_ffn", "w(emb) pre-FFN", ".2f"))


def largest_group(runs: list[dict[str, Any]]) -> str | None:
    """The size with the most compute parameters (load_runs orders groups small to large)."""
    return runs[-1]["group"] if runs else None


def depth_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`depth_statistics` of the largest size's runs, mean and sd over seeds per arm (runs made
    without analyses are left out)."""
    from attnres.analysis.depth import depth_statistics
    group = largest_group(runs)
    arms: dict[str, dict[str, Any]] = {}
    for (arm,), arm_runs in group_runs([r for r in runs if r["group"] == group and r.get("analysis")],
                                       ("arm",)).items():
        per_seed = [depth_statistics(r["analysis"]) for r in arm_runs]
        arms[arm] = {"seeds": [r["seed"] for r in arm_runs],
                     **{key: [st[key] for st in per_seed] for key, _, _ in DEPTH_COLUMNS}}
    return {"group": group, "arms": arms}


def render_depth(depth: dict[str, Any]) -> list[str]:
    if not depth["arms"]:
        return []
    group = depth["group"]
    head = ["arm", "seeds", *(label for _, label, _ in DEPTH_COLUMNS)]
    lines = [f"### Depth analyses of the largest size (`{group}`; [AR] Figs. 5 and 8)", "",
             "On one validation batch after training; mean ± sd over seeds (`attnres.analysis.depth."
             "depth_statistics` defines each number). Stream RMS L/1: the carried state's RMS after the "
             "last sublayer over that after the first; stream grows: the share of sublayers after which "
             "it grew; grad: per-sublayer gradient norms; w(latest), w(emb): mean depth-attention weight "
             "on the most recent source and on the embedding.", "",
             "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for arm, entry in depth["arms"].items():
        cells = [arm, ",".join(map(str, entry["seeds"]))]
        for key, _, spec in DEPTH_COLUMNS:
            values = [v for v in entry[key] if v is not None]
            cells.append(format_mean_sd(values, spec))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![depth profiles]({depth_plot_name(group)})", ""]
    lines += [f"![depth attention, {arm}]({depth_attention_plot_name(group, arm)})"
              for arm, entry in depth["arms"].items() if entry["locality"][0] is not None]
    return lines + [""]


def depth_plot_name(group: str) -> str:
    return f"depth_profiles_{group}.png"


def depth_attention_plot_name(group: str, arm: str) -> str:
    return f"depth_attention_{group}_{arm}.png"


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
    for (size,), group in group_runs([r for r in runs if r["arm"] == "prenorm"] or runs, ("group",)).items():
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
                  "adv(C0) = C_base(L_var(C0)) / C0 from the fits ([AR] §5.1, "
                  "docs/TARGETS.md#a2-scaling-law-fits-and-compute-advantage).", "",
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
    lines += render_depth(summary["depth"])
    return "\n".join(lines)


# --- ablate and sweep: [AR] Table 4 and the block-size sweep (Fig. 6) --------------------------

# The [D] orderings of docs/TARGETS.md#a3-table-4-ablations as paired comparisons (a, relation, b)
# of the val loss: "<" and "≤" are judged by the sign of the mean paired difference a − b, "≈" by
# |mean| ≤ 2 sd.
ABLATE_CLAIMS = (
    ("full-input-query", "≤", "full"),
    ("full", "<", "full-sigmoid"),
    ("full", "<", "full-no-key-norm"),
    ("full-sigmoid", "≈", "full-no-key-norm"),
    ("full-sigmoid", "<", "full-static-mixing"),
    ("full-no-key-norm", "<", "full-static-mixing"),
    ("swa", "≈", "prenorm"),
    ("denseformer", "≈", "prenorm"),
    ("block", "<", "block-no-key-norm"),
    ("block-no-key-norm", "<", "block-multihead"),
)


def paired_difference(runs: list[dict[str, Any]], a: str, b: str, key: str = "val_loss") -> list[float]:
    """a − b per seed, over the seeds both arms ran (runs of one experiment and group)."""
    va = {r["seed"]: r[key] for r in runs if r["arm"] == a}
    vb = {r["seed"]: r[key] for r in runs if r["arm"] == b}
    return [va[k] - vb[k] for k in sorted(va.keys() & vb.keys())]


def _stats_entry(values: list[float]) -> dict[str, Any]:
    mean, sd, n = mean_sd(values)
    return {"mean": mean, "sd": None if math.isnan(sd) else sd, "n": n, "values": list(values)}


def _claim(runs: list[dict[str, Any]], a: str, relation: str, b: str) -> dict[str, Any]:
    diffs = paired_difference(runs, a, b)
    entry: dict[str, Any] = {"a": a, "relation": relation, "b": b, "delta": _stats_entry(diffs) if diffs else None}
    if not diffs:
        entry["verdict"] = "not run"
        return entry
    mean, sd, n = mean_sd(diffs)
    clear = n > 1 and abs(mean) > 2 * sd
    if relation == "≈":
        entry["verdict"] = "— (1 seed)" if n < 2 else ("differ (|Δ| > 2 sd)" if clear else "close (|Δ| ≤ 2 sd)")
    else:
        holds = mean < 0 if relation == "<" else mean <= 0
        entry["verdict"] = ("holds" if holds else "does not hold") + \
            ("" if clear else " (1 seed)" if n < 2 else " (|Δ| ≤ 2 sd)")
    return entry


def _claims_table(checks: list[dict[str, Any]], names: dict[str, str] | None = None) -> list[str]:
    names = names or {}
    lines = ["| expected | paired Δ = left − right | verdict |", "|---|---:|---|"]
    for c in checks:
        d = c["delta"]
        delta = format_mean_sd(d["values"], ".4f", signed=True) if d else "—"
        lines.append(f"| {names.get(c['a'], c['a'])} {c['relation']} {names.get(c['b'], c['b'])} | "
                     f"{delta} | {c['verdict']} |")
    return lines


def _setup_line(group: str, runs: list[dict[str, Any]]) -> str:
    r = runs[0]
    seeds = sorted({x["seed"] for x in runs})
    if "d_model" not in r:
        return f"- `{group}`: seeds {seeds}."
    return (f"- `{group}`: d {r['d_model']}, {r['n_layers']} layers = {r['n_sublayers']} sublayers, "
            f"heads {r['n_heads']}, d_ff {r['d_ff']}; {r['steps']:,} steps × {r['batch_size']} × "
            f"{r['seq_len']} tokens = {r['tokens']:,} tokens per run; peak LR {r.get('lr', '?')}; "
            f"corpus `{r.get('corpus', '?')}`; seeds {seeds}; {r.get('hardware', '?')}.")


def _notes(runs: list[dict[str, Any]]) -> list[str]:
    out = []
    resumed = [r for r in runs if r.get("resumed_from_step")]
    if resumed:
        out.append(f"{len(resumed)} run(s) resumed from a checkpoint: their wall time and tokens/s "
                   "cover the last segment only.")
    if any(r.get("in_process") for r in runs):
        out.append("Some runs trained inside one process (`--in-process`, `--quick`): their peak "
                   "RSS is that process's, accumulated over the runs before them.")
    return [*out, ""] if out else []


def ablate_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model (group) and variant: val loss over seeds, paired Δ vs baseline, the paper's
    value, and the A3 orderings judged on paired seeds."""
    runs = [r for r in runs if r["experiment"] == "ablate"]
    groups = {}
    for (group,), grp in group_runs(runs, ("group",)).items():
        arms = {}
        for (arm,), arm_runs in group_runs(grp, ("arm",)).items():
            entry = _stats_entry([r["val_loss"] for r in arm_runs])
            diffs = paired_difference(grp, arm, "prenorm")
            entry["delta"] = _stats_entry(diffs) if arm != "prenorm" and diffs else None
            entry["paper"] = TABLE4[arm][1] if arm in TABLE4 else None
            arms[arm] = entry
        checks = [_claim(grp, a, rel, b) for a, rel, b in ABLATE_CLAIMS if a in arms and b in arms]
        groups[group] = {"arms": arms, "checks": checks}
    return {"groups": groups}


def render_ablate(runs: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    summary = summary or ablate_summary(runs)
    order = list(TABLE4)
    rank = {name: (order.index(name) if name in order else len(order), name) for name in {r["arm"] for r in runs}}
    runs = sorted(runs, key=lambda r: (str(r["group"]), rank[r["arm"]], r["seed"]))
    lines = ["## Experiment `ablate`: [AR] Table 4 at toy scale (docs/TARGETS.md#a3-table-4-ablations)", "",
             "Same backbone, initialisation, data order, token budget and LR for every variant; only "
             "the residual mechanism differs (docs/THEORY.md#ablation-variants).", ""]
    lines += [_setup_line(g, grp) for (g,), grp in group_runs(runs, ("group",)).items()]
    lines += ["", "Final validation loss (nats/token), mean ± sd over seeds; Δ pairs each seed with the "
              "baseline of the same seed. [AR] columns: the 436M model's Table 4 (val loss, Δ vs its "
              f"baseline {PAPER_BASELINE}); compare orderings, not magnitudes. Tokens/s and peak RSS "
              "are per run on this CPU.", "",
              "| model | variant | seeds | val loss | Δ vs baseline (paired) | [AR] val loss | [AR] Δ | "
              "tokens/s | peak RSS (MB) | Table-4 row |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for (group, arm), grp in group_runs(runs, ("group", "arm")).items():
        delta = paired_difference([r for r in runs if r["group"] == group], arm, "prenorm")
        paper = TABLE4[arm][1] if arm in TABLE4 else None
        cells = [str(group), arm, ",".join(str(r["seed"]) for r in grp),
                 format_mean_sd([r["val_loss"] for r in grp], ".4f"),
                 format_mean_sd(delta, ".4f", signed=True) if arm != "prenorm" else "—",
                 f"{paper:.3f}" if paper is not None else "—",
                 f"{paper - PAPER_BASELINE:+.3f}" if paper is not None and arm != "prenorm" else "—",
                 format_mean_sd([r["tokens_per_s"] for r in grp if "tokens_per_s" in r], ",.0f"),
                 format_mean_sd([r["peak_rss_mb"] for r in grp if "peak_rss_mb" in r], ",.0f"),
                 grp[0].get("label") or (TABLE4[arm][0] if arm in TABLE4 else arm)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_notes(runs)]
    for group, entry in summary["groups"].items():
        if entry["checks"]:
            lines += [f"### [D] orderings of A3 on paired seeds (`{group}`)", "",
                      "A miss is a finding at this scale, not a bug; with two seeds the sd is rough.", "",
                      *_claims_table(entry["checks"]), ""]
    return "\n".join(lines)


def _sweep_size(run: dict[str, Any]) -> int:
    return run.get("block_size") or int(str(run["arm"]).lstrip("S"))


def sweep_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model (group): val loss by block size S and of the baseline, paired Δ, the paper's
    Fig. 6 values, and the A4 shape judged on paired seeds."""
    runs = [r for r in runs if r["experiment"] == "sweep"]
    groups = {}
    for (group,), grp in group_runs(runs, ("group",)).items():
        base = [r["val_loss"] for r in grp if r["arm"] == "prenorm"]
        sizes: dict[int, dict[str, Any]] = {}
        for r in sorted((r for r in grp if r["arm"] != "prenorm"), key=_sweep_size):
            info = sizes.setdefault(_sweep_size(r), {"arm": r["arm"], "n_blocks": r.get("n_blocks"), "runs": []})
            info["runs"].append(r)
        out = {}
        for k, info in sizes.items():
            entry = _stats_entry([r["val_loss"] for r in info["runs"]])
            diffs = paired_difference(grp, info["arm"], "prenorm")
            entry.update(arm=info["arm"], n_blocks=info["n_blocks"], paper=PAPER_SWEEP.get(k),
                         delta=_stats_entry(diffs) if diffs else None)
            out[str(k)] = entry
        arms = [info["arm"] for info in sizes.values()]
        checks = [_claim(grp, a, "≤", b) for a, b in zip(arms, arms[1:])]
        n_sub = grp[0].get("n_sublayers")
        if base and n_sub in sizes:  # S = L, a single block, still beats the baseline
            checks.append(_claim(grp, sizes[n_sub]["arm"], "<", "prenorm"))
        groups[group] = {"prenorm": _stats_entry(base) if base else None, "sizes": out, "checks": checks}
    return {"groups": groups}


def sweep_plot_name(group: str) -> str:
    return f"sweep_{group}.png"


def render_sweep(runs: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    summary = summary or sweep_summary(runs)
    lines = ["## Experiment `sweep`: block size S ([AR] Fig. 6, docs/TARGETS.md#a4-block-size-sweep)", "",
             "Block AttnRes with S sublayers per block (N = ⌈L/S⌉ blocks; S = 1 is Full AttnRes) on "
             "the ablation model, against the PreNorm baseline; same backbone, budget and LR.", ""]
    lines += [_setup_line(g, grp) for (g,), grp in group_runs(runs, ("group",)).items()]
    lines += ["", "Final validation loss (nats/token), mean ± sd over seeds, Δ paired with the baseline "
              f"of the same seed. [AR] columns: Fig. 6 read from the figure (baseline {PAPER_BASELINE}).", "",
              "| model | S | N | seeds | val loss | Δ vs baseline (paired) | [AR] val loss | [AR] Δ | "
              "tokens/s | peak RSS (MB) |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for (group,), grp in group_runs(runs, ("group",)).items():
        ordered = sorted(grp, key=lambda r: (0 if r["arm"] == "prenorm" else _sweep_size(r), r["seed"]))
        for (arm,), arm_runs in group_runs(ordered, ("arm",)).items():
            k = None if arm == "prenorm" else _sweep_size(arm_runs[0])
            entry = summary["groups"][group]["sizes"].get(str(k), {}) if k else {}
            paper = PAPER_BASELINE if k is None else entry.get("paper")
            delta = paired_difference(grp, arm, "prenorm")
            cells = [str(group), "baseline" if k is None else str(k),
                     "—" if k is None else str(entry.get("n_blocks") or "?"),
                     ",".join(str(r["seed"]) for r in arm_runs),
                     format_mean_sd([r["val_loss"] for r in arm_runs], ".4f"),
                     "—" if k is None else format_mean_sd(delta, ".4f", signed=True),
                     f"{paper:.3f}" if paper is not None else "—",
                     f"{paper - PAPER_BASELINE:+.3f}" if paper is not None and k is not None else "—",
                     format_mean_sd([r["tokens_per_s"] for r in arm_runs if "tokens_per_s" in r], ",.0f"),
                     format_mean_sd([r["peak_rss_mb"] for r in arm_runs if "peak_rss_mb" in r], ",.0f")]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_notes(runs)]
    names = {e["arm"]: f"S={k}" for g in summary["groups"].values() for k, e in g["sizes"].items()}
    for group, entry in summary["groups"].items():
        if entry["checks"]:
            lines += [f"### [D] shape of A4 on paired seeds (`{group}`)", "",
                      "Expected: the loss is nondecreasing in S, and S = L (N = 1) still beats the "
                      "baseline. A miss is a finding at this scale, not a bug.", "",
                      *_claims_table(entry["checks"], names), ""]
        lines += [f"![val loss vs S ({group})]({sweep_plot_name(group)})", ""]
    return "\n".join(lines)


# experiment -> (summary of its runs, saved in summary.json; markdown from runs and summary)
Summariser = Callable[[list[dict[str, Any]]], dict[str, Any]]
Renderer = Callable[[list[dict[str, Any]], dict[str, Any] | None], str]
RENDERERS: dict[str, tuple[Summariser | None, Renderer]] = {
    "scaling": (scaling_summary, render_scaling),
    "ablate": (ablate_summary, render_ablate),
    "sweep": (sweep_summary, render_sweep),
}


@dataclass
class Report:
    markdown: str
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # as `load_runs` returned them


def _depth_plots(root: Path, runs: list[dict[str, Any]], group: str | None) -> list[Path]:
    """Figs. 5 and 8 counterparts for the largest size, from each arm's lowest seed."""
    from attnres.experiments import plots
    first = {}
    for r in runs:
        if r["group"] == group and r.get("analysis"):
            first.setdefault(r["arm"], r)
    if not first:
        return []
    seeds = sorted({r["seed"] for r in first.values()})
    files = [plots.plot_depth_profiles({arm: r["analysis"] for arm, r in first.items()},
                                       root / depth_plot_name(group),
                                       f"{group}: depth analyses after training (seed {seeds[0]})")]
    for arm, r in first.items():
        if r["analysis"].get("depth_weights"):
            files.append(plots.plot_depth_attention(r["analysis"], root / depth_attention_plot_name(group, arm),
                                                    f"{group}, {arm}: mean depth-attention weights (seed {r['seed']})"))
    return files


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
    return Report("\n".join(parts), summaries, runs=runs)


def write_report(root: str | Path) -> Report:
    """Rebuild `report.md`, `summary.json` and, for a scaling sweep, `scaling.png` in `root`
    (for a block-size sweep, `sweep_<model>.png`)."""
    from attnres.experiments import plots
    root = Path(root)
    rep = build_report(root)
    (root / "report.md").write_text(rep.markdown)
    (root / "summary.json").write_text(json.dumps(rep.summaries, indent=2))
    rep.files += [root / "report.md", root / "summary.json"]
    scaling = rep.summaries.get("scaling")
    if scaling:
        runs = [r for r in rep.runs if r["experiment"] == "scaling"]
        points = {arm: [(r["compute_pfs_days"], r["val_loss"]) for r in group]
                  for (arm,), group in group_runs(runs, ("arm",)).items()}
        fits = {arm: (e["A"], e["alpha"]) for arm, e in scaling["fits"].items() if "A" in e}
        rep.files.append(plots.plot_scaling(points, fits, root / "scaling.png",
                                            "validation loss vs training compute (dense ladder)"))
        rep.files += _depth_plots(root, runs, scaling["depth"]["group"])
    for group, entry in rep.summaries.get("sweep", {}).get("groups", {}).items():
        sizes = {int(k): e["values"] for k, e in entry["sizes"].items()}
        base = entry["prenorm"]["values"] if entry["prenorm"] else []
        rep.files.append(plots.plot_block_sweep(sizes, base, root / sweep_plot_name(group),
                                                f"validation loss vs block size S ({group})",
                                                paper=(PAPER_SWEEP, PAPER_BASELINE)))
    return rep
