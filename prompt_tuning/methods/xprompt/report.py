"""XPrompt's report: `report.json` and a heatmap of importance scores and masks.

`report.json` fields::

  token_scores      [P]      importance of each token at the unpruned prompt
  piece_scores      [P][k]   importance of each piece at the unpruned prompt
  token_mask        [P]      final α, 0/1
  piece_mask        [P][k]   final β, 0/1 (rows of pruned tokens are left at 1;
                             the prompt's kept values are token_mask ⊗ piece_mask)
  chosen            {level, token_ratio, piece_ratio, metric, kept_tokens,
                     kept_values_fraction}
  stages            {stage name: validation metric}, e.g. prompt_tuning,
                    pruning, rewinding
  candidates        [{level, ratio, metric, kept_tokens, kept_values_fraction,
                      token_scores, piece_scores}]  every evaluated ratio, in order
  pieces, prompt_length, metric_name, higher_is_better
"""
from typing import Dict

import numpy as np

from prompt_tuning import fs
from prompt_tuning.methods.xprompt.masks import Candidate, SearchResult

REPORT_NAME = "report.json"
HEATMAP_NAME = "importance.png"


def _list(x, integer: bool = False):
  if x is None:
    return None
  a = np.asarray(x)
  return (a > 0).astype(int).tolist() if integer else a.astype(float).tolist()


def _candidate_json(c: Candidate) -> dict:
  return {"level": c.level, "ratio": c.ratio, "metric": c.metric,
          "kept_tokens": c.kept_tokens, "kept_values_fraction": c.kept_values_fraction,
          "token_scores": _list(c.token_scores), "piece_scores": _list(c.piece_scores)}


def build_report(result: SearchResult, stages: Dict[str, float], metric_name: str = "metric",
                 higher_is_better: bool = True) -> dict:
  """The report as a JSON-ready dict (see the module docstring)."""
  scored = [c for c in result.candidates if c.token_scores is not None]
  best = result.best
  first = scored[0] if scored else None
  token_ratio = result.best_token.ratio if result.best_token.level == "token" else 0.0
  piece_ratio = best.ratio if best.level == "piece" else 0.0
  return {
      "prompt_length": int(best.token_mask.shape[0]),
      "pieces": int(best.piece_mask.shape[1]),
      "metric_name": metric_name,
      "higher_is_better": higher_is_better,
      "token_scores": _list(first.token_scores) if first else None,
      "piece_scores": _list(first.piece_scores) if first else None,
      "token_mask": _list(best.token_mask, integer=True),
      "piece_mask": _list(best.piece_mask, integer=True),
      "chosen": {"level": best.level, "token_ratio": token_ratio, "piece_ratio": piece_ratio,
                 "metric": best.metric, "kept_tokens": best.kept_tokens,
                 "kept_values_fraction": best.kept_values_fraction},
      "stages": {k: float(v) for k, v in stages.items()},
      "candidates": [_candidate_json(c) for c in result.candidates],
  }


def plot_heatmap(path: str, token_scores: np.ndarray, piece_scores: np.ndarray,
                 token_mask: np.ndarray, piece_mask: np.ndarray) -> None:
  """Writes a PNG: token scores, piece scores `[k, P]` and the kept mask `[k, P]`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  token_scores = np.asarray(token_scores, float)
  piece_scores = np.asarray(piece_scores, float)
  kept = (np.asarray(token_mask)[:, None] > 0) & (np.asarray(piece_mask) > 0)
  length, pieces = piece_scores.shape
  width = min(4 + 0.15 * length, 40)
  token_rows = max(2, pieces // 5)
  fig, axes = plt.subplots(3, 1, figsize=(width, 3 + 0.3 * (2 * pieces + token_rows)),
                           gridspec_kw={"height_ratios": [token_rows, pieces, pieces]})
  panels = [(token_scores[None, :], "token importance", "viridis", True),
            (piece_scores.T, "piece importance", "viridis", True),
            (kept.T.astype(float), "kept values (token mask × piece mask; black = kept)", "Greys",
             False)]
  for ax, (data, title, cmap, colorbar) in zip(axes, panels):
    image = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap,
                      vmin=0.0 if not colorbar else None, vmax=1.0 if not colorbar else None)
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if data.shape[0] == 1:
      ax.set_yticks([])
    bar = fig.colorbar(image, ax=ax)
    bar.ax.set_visible(colorbar)  # a hidden bar keeps the panels aligned
  axes[-1].set_xlabel("prompt token")
  axes[1].set_ylabel("piece")
  axes[2].set_ylabel("piece")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_report(directory: str, result: SearchResult, stages: Dict[str, float],
                 metric_name: str = "metric", higher_is_better: bool = True) -> Dict[str, str]:
  """Writes `report.json` and `importance.png` into `directory` (created if needed).

  Returns:
    `{"report": path, "heatmap": path}`.
  """
  report = build_report(result, stages, metric_name, higher_is_better)
  report_path = fs.join(directory, REPORT_NAME)
  fs.write_json(report_path, report)
  heatmap_path = fs.join(directory, HEATMAP_NAME)
  if report["token_scores"] is not None:
    token_scores, piece_scores = report["token_scores"], report["piece_scores"]
  else:  # no pruning round ran: plot zeros so the masks are still shown
    token_scores = np.zeros(report["prompt_length"])
    piece_scores = np.zeros((report["prompt_length"], report["pieces"]))
  plot_heatmap(heatmap_path, np.asarray(token_scores), np.asarray(piece_scores),
               result.best.token_mask, result.best.piece_mask)
  return {"report": report_path, "heatmap": heatmap_path}
