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
  decisive_token_scores [P]     the score that decided each token: for a pruned
                                token the score of the round that pruned it, for a
                                kept token its score in the last round before the
                                chosen sub-prompt (null before any round)
  decisive_piece_scores [P][k]  the same for pieces (null for pieces of pruned tokens)
  pieces, prompt_length, metric_name, higher_is_better
  note              why `stages.pruning` cannot be below `stages.prompt_tuning`
"""
from typing import Dict, List, Tuple

import jax
import numpy as np

from prompt_tuning import fs
from prompt_tuning.methods.xprompt.masks import Candidate, SearchResult
from prompt_tuning.run_dir import XPromptSearchDir



def _list(x, integer: bool = False):
  if x is None:
    return None
  a = np.asarray(x)
  return (a > 0).astype(int).tolist() if integer else a.astype(float).tolist()


def _candidate_json(c: Candidate) -> dict:
  return {"level": c.level, "ratio": c.ratio, "metric": c.metric,
          "kept_tokens": c.kept_tokens, "kept_values_fraction": c.kept_values_fraction,
          "token_scores": _list(c.token_scores), "piece_scores": _list(c.piece_scores)}


def chosen_path(result: SearchResult) -> List[Candidate]:
  """The candidates that led to the chosen sub-prompt: token rounds up to the best token
  sub-prompt, then piece rounds up to the chosen one."""
  path = [result.candidates[0]]
  for c in result.candidates[1:]:
    if c.level == "token" and result.best_token.level == "token" and c.ratio <= result.best_token.ratio:
      path.append(c)
    elif c.level == "piece" and result.best.level == "piece" and c.ratio <= result.best.ratio:
      path.append(c)
  return path


def decisive_scores(result: SearchResult) -> Tuple[np.ndarray, np.ndarray]:
  """`[P]`, `[P, k]`: the score that pruned each entry, or kept it (NaN: never scored)."""
  best = result.best
  tokens = np.full(best.token_mask.shape, np.nan)
  pieces = np.full(best.piece_mask.shape, np.nan)
  previous = result.candidates[0]
  for c in chosen_path(result)[1:]:
    token_pruned = (previous.token_mask > 0) & (c.token_mask == 0)
    piece_pruned = (previous.piece_mask > 0) & (c.piece_mask == 0)
    tokens[token_pruned] = np.asarray(c.token_scores)[token_pruned]
    pieces[piece_pruned] = np.asarray(c.piece_scores)[piece_pruned]
    previous = c
  last = chosen_path(result)[-1]
  if last.token_scores is not None:  # kept entries: their score in the deciding round
    kept = best.token_mask > 0
    tokens[kept] = np.asarray(last.token_scores)[kept]
    kept_pieces = kept[:, None] & (best.piece_mask > 0)
    pieces[kept_pieces] = np.asarray(last.piece_scores)[kept_pieces]
  pieces[best.token_mask == 0] = np.nan  # pruned with their token
  return tokens, pieces


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
      "decisive_token_scores": _nullable(decisive_scores(result)[0]),
      "decisive_piece_scores": _nullable(decisive_scores(result)[1]),
      "note": (f"stages.pruning is the best of {len(result.candidates)} evaluations on the "
               "validation split that chose it (the unpruned prompt included), so it cannot be "
               "below stages.prompt_tuning; compare held-out numbers (held_out_stages) instead"),
  }


def _nullable(values: np.ndarray):
  return [_nullable(v) for v in values] if np.ndim(values) else (
      None if np.isnan(values) else float(values))


def plot_heatmap(path: str, token_scores: np.ndarray, piece_scores: np.ndarray,
                 token_mask: np.ndarray, piece_mask: np.ndarray) -> None:
  """Writes a PNG: the decisive token scores, piece scores `[k, P]` and the kept mask.

  Pruned tokens and pieces are marked with a red x over the score that pruned
  them; pieces of pruned tokens are blank (they went with their token).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  token_scores = np.asarray(token_scores, float)
  piece_scores = np.asarray(piece_scores, float)
  token_kept = np.asarray(token_mask) > 0
  kept = token_kept[:, None] & (np.asarray(piece_mask) > 0)
  length, pieces = piece_scores.shape
  width = min(4 + 0.15 * length, 40)
  token_rows = max(2, pieces // 5)
  fig, axes = plt.subplots(3, 1, figsize=(width, 3 + 0.3 * (2 * pieces + token_rows)),
                           gridspec_kw={"height_ratios": [token_rows, pieces, pieces]})
  panels = [(token_scores[None, :], "token importance (x: pruned by this score)", "viridis", True),
            (piece_scores.T, "piece importance (x: pruned by this score; blank: token pruned)",
             "viridis", True),
            (kept.T.astype(float), "kept values (token mask × piece mask; black = kept)", "Greys",
             False)]
  for ax, (data, title, cmap, colorbar) in zip(axes, panels):
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", interpolation="nearest",
                      cmap=cmap, vmin=0.0 if not colorbar else None,
                      vmax=1.0 if not colorbar else None)
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if data.shape[0] == 1:
      ax.set_yticks([])
    bar = fig.colorbar(image, ax=ax)
    bar.ax.set_visible(colorbar)  # a hidden bar keeps the panels aligned
  pruned_tokens = np.nonzero(~token_kept)[0]
  axes[0].scatter(pruned_tokens, np.zeros_like(pruned_tokens), marker="x", c="red", s=60)
  pruned_pieces = np.argwhere(token_kept[:, None] & ~kept)
  if len(pruned_pieces):
    axes[1].scatter(pruned_pieces[:, 0], pruned_pieces[:, 1], marker="x", c="red", s=30)
  axes[-1].set_xlabel("prompt token")
  axes[1].set_ylabel("piece")
  axes[2].set_ylabel("piece")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_report(directory: XPromptSearchDir, result: SearchResult, stages: Dict[str, float],
                 metric_name: str = "metric", higher_is_better: bool = True) -> Dict[str, str]:
  """Writes `report.json` and `importance.png` into `directory` (created if needed).

  Returns:
    `{"report": path, "heatmap": path}`.
  """
  report = build_report(result, stages, metric_name, higher_is_better)
  report_path = directory.report
  fs.write_json(report_path, report)
  heatmap_path = directory.heatmap
  token_scores, piece_scores = decisive_scores(result)
  if jax.process_index() == 0:  # every host holds the same result; one writes
    plot_heatmap(heatmap_path, token_scores, piece_scores, result.best.token_mask,
                 result.best.piece_mask)
  return {"report": report_path, "heatmap": heatmap_path}
