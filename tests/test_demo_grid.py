"""The experiments' statistics (experiments/demo_grid.py): selection on validation only, and
differences paired by seed with their standard error."""
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "experiments"))
import demo_grid  # noqa: E402  pylint: disable=wrong-import-position


def _run(method, length, lr, seed, validation, test):
  return {"method": method, "prompt_length": length, "learning_rate": lr, "seed": seed,
          "best_validation_exact_match": validation, "test_exact_match": test}


def test_the_rate_is_selected_on_validation_never_on_test():
  results = [
      # 0.1 has the best validation mean; 0.3 the best test: validation must win.
      *[_run("a", 5, 0.1, s, 0.9, 0.1) for s in range(3)],
      *[_run("a", 5, 0.3, s, 0.5, 0.99) for s in range(3)],
      # A tie on validation goes to the smaller rate.
      *[_run("b", 5, 0.03, s, 0.7, 0.0) for s in range(3)],
      *[_run("b", 5, 0.3, s, 0.7, 1.0) for s in range(3)],
  ]
  assert demo_grid.select_learning_rates(results) == {("a", 5): 0.1, ("b", 5): 0.03}


def test_the_difference_is_paired_by_seed_with_its_standard_error():
  a = [{"seed": s, "test_exact_match": v} for s, v in [(0, 0.5), (1, 0.9), (2, 0.7), (7, 1.0)]]
  b = [{"seed": s, "test_exact_match": v} for s, v in [(2, 0.6), (0, 0.3), (1, 0.6)]]
  d = demo_grid.paired_difference(a, b)
  diffs = [0.2, 0.3, 0.1]  # seed 7 has no partner
  mean = sum(diffs) / 3
  sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
  assert d["n"] == 3
  assert d["mean"] == pytest.approx(mean)
  assert d["se"] == pytest.approx(sd / math.sqrt(3))
  assert d["n_se"] == pytest.approx(mean / (sd / math.sqrt(3)))
  with pytest.raises(ValueError, match="2 or more common seeds"):
    demo_grid.paired_difference(a[:1], b)


def test_the_comparison_uses_each_methods_own_selected_rate():
  results = [*[_run("residual", 1, 0.3, s, 0.8, 0.6 + s / 100) for s in range(3)],
             *[_run("residual", 1, 0.1, s, 0.2, 0.0) for s in range(3)],
             *[_run("prompt_tuning", 1, 0.1, s, 0.9, 0.5) for s in range(3)],
             *[_run("prompt_tuning", 1, 0.3, s, 0.1, 0.0) for s in range(3)]]
  rows, table = demo_grid.selected_comparison(results, "residual", "prompt_tuning", [1])
  assert rows[0]["residual_learning_rate"] == 0.3
  assert rows[0]["prompt_tuning_learning_rate"] == 0.1
  assert rows[0]["difference"]["mean"] == pytest.approx(0.11)
  assert "| 1 | 0.1 |" in table
