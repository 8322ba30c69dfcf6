"""The demo's learning-curve figure (PNG, no display needed)."""
from typing import Any, Mapping


def learning_curves(path: str, summary: Mapping[str, Any]) -> None:
  """Train loss and held-out exact match against step, one line per method."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (loss_ax, em_ax) = plt.subplots(1, 2, figsize=(10, 4))
  pretrain = summary["backbone"].get("history") or []
  for row in summary["methods"]:
    if "skipped" in row:
      continue
    loss_ax.plot([h["step"] for h in row["train_history"]], [h["loss"] for h in row["train_history"]],
                 label=row["method"])
    em_ax.plot([0] + [h["step"] for h in row["eval_history"]],
               [summary["baseline"]["held_out_exact_match"]]
               + [h["exact_match"] for h in row["eval_history"]], marker="o", label=row["method"])
  if pretrain:
    loss_ax.plot([h["step"] for h in pretrain], [h["loss"] for h in pretrain], "k:",
                 label="backbone pretraining")
  em_ax.axhline(summary["baseline"]["held_out_exact_match"], color="grey", linestyle="--",
                label="untrained random prompt")
  em_ax.axhline(summary["backbone"]["instructed_exact_match"], color="black", linestyle=":",
                label="backbone + instruction word")
  loss_ax.set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
  em_ax.set(xlabel="step", ylabel="held-out exact match", ylim=(-0.02, 1.02),
            title=f"held-out exact match on {summary['task']}")
  loss_ax.legend()
  em_ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
