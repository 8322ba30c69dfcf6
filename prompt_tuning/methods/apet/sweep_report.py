"""The results of a parameter-budget sweep: thresholds, table and figure (pure, no runs).

Definitions of the thresholds are in `methods.apet.sweep`'s module docstring.
"""
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np


def _se(m: float, c: float, n: int) -> float:
  return math.sqrt(max(m * (1 - m), 0.0) / n + max(c * (1 - c), 0.0) / n)


def summarize(rows: Sequence[Mapping[str, Any]], chance: float, full: Optional[float],
              n_examples: int, low_margin: float = 0.05, high_gap: float = 0.01
              ) -> Dict[str, Any]:
  """Per method and budget: mean, sd and count of the metric; thresholds; spread.

  Args:
    rows: finished cells, `{method, budget, parameters, metric}`.
    chance: the frozen backbone's metric.
    full: full fine-tuning's metric (None: no high threshold).
    n_examples: held-out examples behind each metric (for the standard error).
    low_margin, high_gap: see the module doc.
  """
  points: Dict[str, List[Dict[str, Any]]] = {}
  for method in sorted({r["method"] for r in rows}):
    for budget in sorted({r["budget"] for r in rows if r["method"] == method}):
      cell = [r for r in rows if r["method"] == method and r["budget"] == budget]
      values = [r["metric"] for r in cell]
      mean = float(np.mean(values))
      points.setdefault(method, []).append({
          "budget": budget, "parameters": float(np.mean([r["parameters"] for r in cell])),
          "mean": mean, "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          "runs": len(values),
          "clearly_above_chance": mean >= chance + max(low_margin, 2 * _se(mean, chance,
                                                                             n_examples)),
          "near_full_finetune": full is not None and mean >= full - high_gap})
  low = {m: next((p["budget"] for p in ps if p["clearly_above_chance"]), None)
         for m, ps in points.items()}
  high = {m: next((p["budget"] for p in ps if p["near_full_finetune"]), None)
          for m, ps in points.items()}
  budgets = sorted({p["budget"] for ps in points.values() for p in ps})
  spread, all_above = {}, {}
  for b in budgets:
    here = [p for ps in points.values() for p in ps if p["budget"] == b]
    spread[b] = max(p["mean"] for p in here) - min(p["mean"] for p in here) if len(here) > 1 \
        else None
    all_above[b] = all(p["clearly_above_chance"] for p in here)
  overall_low = next((b for i, b in enumerate(budgets)
                      if all(all_above[c] for c in budgets[i:])), None)
  below = [spread[b] for b in budgets if spread[b] is not None
           and (overall_low is None or b < overall_low)]
  above = [spread[b] for b in budgets if spread[b] is not None
           and overall_low is not None and b >= overall_low]
  return {
      "points": points, "low_threshold": low, "high_threshold": high,
      "low_threshold_all_methods": overall_low,
      "spread_by_budget": {str(b): s for b, s in spread.items()},
      "mean_spread_below_low_threshold": float(np.mean(below)) if below else None,
      "mean_spread_from_low_threshold": float(np.mean(above)) if above else None,
      "definitions": {
          "clearly_above_chance": f"mean >= chance + max({low_margin}, 2*sqrt(m(1-m)/n + "
                                  f"c(1-c)/n)), n = {n_examples}",
          "low_threshold": "smallest budget clearly above chance",
          "high_threshold": f"smallest budget with mean >= full fine-tuning - {high_gap}",
          "low_threshold_all_methods": "smallest budget from which on every method with a "
                                       "cell is clearly above chance",
          "spread": "max - min of the method means at one budget"},
  }


def format_table(summary: Mapping[str, Any]) -> str:
  """The console/markdown table: one row per method and budget."""
  metric = summary["metric"]
  lines = [f"| method | budget | setting | trainable | {metric} (mean ± sd, runs) |",
           "|---|---|---|---|---|"]
  lines.append(f"| frozen backbone (chance) | – | – | 0 | {summary['chance']:.3f} |")
  if summary.get("full_finetune") is not None:
    ff = summary["full_finetune"]
    lines.append(f"| full fine-tuning | – | – | {ff['parameters']:,} | {ff['metric']:.3f} |")
  by_cell = {}
  for row in summary["cells"]:
    if row["method"] != "full_finetune":
      by_cell.setdefault((row["method"], row["budget"]), []).append(row)
  for method, ps in summary["thresholds"]["points"].items():
    for p in ps:
      rows = by_cell[(method, p["budget"])]
      setting = ", ".join(f"{k} {v}" for k, v in rows[0]["setting"].items() if k != "seed")
      if method == "apet":
        setting = "seeds " + ",".join(str(r["setting"]["seed"]) for r in rows)
      value = f"{p['mean']:.3f}" + (f" ± {p['sd']:.3f} ({p['runs']})" if p["runs"] > 1 else "")
      lines.append(f"| {method} | {p['budget']:,} | {setting} | {int(p['parameters']):,} | "
                   f"{value} |")
  for s in summary["skipped"]:
    lines.append(f"| {s['method']} | {s['budget']:,} | skipped: {s['reason']} | – | – |")
  return "\n".join(lines)


def plot(path: str, summary: Mapping[str, Any]) -> None:
  """Metric vs trainable parameters (log x) per method; APET mean ± sd; chance and full FT."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, ps in summary["thresholds"]["points"].items():
    x = [p["parameters"] for p in ps]
    y = [p["mean"] for p in ps]
    if method == "apet":
      ax.errorbar(x, y, yerr=[p["sd"] for p in ps], marker="o", capsize=3,
                  label=f"APET (mean ± sd over {max(p['runs'] for p in ps)} seeds)")
    else:
      ax.plot(x, y, marker="o", label=method)
  ax.axhline(summary["chance"], color="grey", linestyle="--", label="chance (frozen backbone)")
  if summary.get("full_finetune") is not None:
    ff = summary["full_finetune"]
    ax.axhline(ff["metric"], color="black", linestyle=":",
               label=f"full fine-tuning ({ff['parameters']:,} parameters)")
  low = summary["thresholds"]["low_threshold_all_methods"]
  if low is not None:
    ax.axvline(low, color="tab:red", alpha=0.3, label=f"low threshold (all methods), budget {low:,}")
  ax.set(xscale="log", xlabel="trainable parameters", ylabel=f"held-out {summary['metric']}",
         ylim=(-0.02, 1.02), title=f"{summary['task']}: {summary['steps']} steps per run")
  ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
