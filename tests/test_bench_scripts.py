"""The bench scripts' own logic (no timing): sizes, the GPU plan, the grouped-batches file."""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning.data import bucketing
from prompt_tuning.models.config import T5_1_1_SIZES

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import run_gpu  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_peft_sizes_are_the_t5_1_1_sizes():
  """PEFT's side builds the same T5 1.1 as ours (it cannot import ours: other venv)."""
  tree = ast.parse(open(os.path.join(BENCH, "peft_step.py")).read())
  sizes = next(ast.literal_eval(node.value) for node in tree.body
               if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SIZES")
  assert sizes == {name: (c["emb_dim"], c["mlp_dim"], c["num_encoder_layers"], c["num_heads"])
                   for name, c in T5_1_1_SIZES.items()}
  assert all(c["head_dim"] == 64 and c["num_decoder_layers"] == c["num_encoder_layers"]
             for c in T5_1_1_SIZES.values())


def _args(**overrides):
  import argparse
  defaults = dict(sizes=["base", "large"], dtypes=["bfloat16", "float32"], batch_size=32,
                  steps=10, batches="b.npz")
  return argparse.Namespace(**{**defaults, **overrides})


def test_gpu_plan_puts_the_main_comparison_first_and_pairs_every_step():
  names = list(run_gpu.plan(_args()))
  assert names[:4] == ["matmul_peak_bfloat16", "matmul_peak_float32", "ours_base_bfloat16",
                       "peft_base_bfloat16"]
  assert {"ours_large_bfloat16", "peft_large_bfloat16", "ours_base_float32",
          "peft_base_float32", "bucketing_throughput"} <= set(names)
  assert "ours_large_float32" not in names  # other dtypes at the first size only
  assert "bucketing_throughput" not in run_gpu.plan(_args(batches=None))
  ours = run_gpu.plan(_args())["ours_base_bfloat16"]
  assert ours[ours.index("--frozen_dtype") + 1] == "bfloat16"


def test_gpu_derived_ratios():
  results = {"matmul_peak_bfloat16": {"peak_gflops": 1000.0},
             "ours_base_bfloat16": {"median_step_s": 0.02, "dtype": "bfloat16",
                                    "flops_per_step": 4e9, "flops_per_s": 2e11},
             "peft_base_bfloat16": {"median_step_s": 0.1},
             "ours_large_bfloat16": {"error": "timed out"}}
  out = run_gpu.derived(results)
  assert out == {"peft_over_ours_base_bfloat16": pytest.approx(5.0),
                 "ours_base_bfloat16_fraction_of_matmul_peak": pytest.approx(0.2)}


def test_saved_batches_hold_the_buckets_and_the_padding_counts(tmp_path):
  path = tmp_path / "batches.npz"
  proc = subprocess.run([sys.executable, os.path.join(BENCH, "bucketing_throughput.py"),
                         "--save_batches", str(path), "--steps", "6", "--batch_size", "4",
                         "--window", "2"], capture_output=True, text=True, check=True)
  stats = json.loads(proc.stdout.strip().splitlines()[-1])
  data = np.load(path)
  inputs, widths = data["inputs"], data["widths"]
  assert inputs.shape == (6, 4, 512) and widths.shape == (6,)
  lengths = (inputs > 0).sum(-1)  # [S, B]
  buckets = list(bucketing.auto_inputs(512))  # the script's default: BUCKETS='auto' at 512
  # Each batch's bucket is the smallest that holds its longest example.
  assert list(widths) == [min(b for b in buckets if b >= m) for m in lengths.max(1)]
  assert stats["real_input_tokens"] == int(lengths.sum())
  assert stats["padded_input_tokens"] == {"ours_bucketed": int(widths.sum()) * 4,
                                          "ours_padded": 6 * 4 * 512,
                                          "peft": int(lengths.max(1).sum()) * 4}


def test_preload_reaches_every_run_and_a_missing_library_is_refused(tmp_path):
  """`--preload` goes into each contender's environment alike; a path that is not there stops
  the bench instead of timing glibc under another name."""
  import bucketing_throughput  # pylint: disable=import-outside-toplevel
  probe = [sys.executable, "-c", "import json, os; print(json.dumps({'preload': "
           "os.environ.get('LD_PRELOAD')}))"]
  library = tmp_path / "libnothing.so"
  with pytest.raises(SystemExit, match="libnothing.so: no such file"):
    bucketing_throughput.run_child(probe, 2, str(library))
  assert bucketing_throughput.run_child(probe, 2, None)["preload"] == os.environ.get("LD_PRELOAD")
  # An empty file is not a loadable library: the dynamic loader warns and goes on, which is
  # enough to see that the variable arrived.
  library.write_bytes(b"")
  assert bucketing_throughput.run_child(probe, 2, str(library))["preload"] == str(library)


def test_packed_arm_packs_every_example_of_the_batches_file_once(tmp_path):
  sys.path.insert(0, BENCH)
  import bucketing_throughput  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  lengths = np.minimum(bucketing_throughput.sample_lengths(32, 0, 64, "skewed") // 4 + 1, 20)
  inputs = np.zeros((4, 8, 64), np.int32)
  for i, n in enumerate(lengths):
    inputs[i // 8, i % 8, :n] = rng.integers(3, 100, n)
  targets = np.tile(np.array([7, 1, 0, 0], np.int32), (4, 8, 1))
  path = str(tmp_path / "batches.npz")
  np.savez(path, inputs=inputs, targets=targets, widths=np.full(4, 64, np.int32))
  stream = bucketing_throughput.packed_stream(path, 10, 8, 4)
  assert sum(count for _, count in stream) == 32
  assert sum(int((b["encoder_input_tokens"] > 0).sum()) for b, _ in stream) == int(lengths.sum())
  assert len(stream) < 4  # fewer steps than the unpacked batches


def test_train_bench_rate_leaves_out_the_first_steps_and_those_that_compiled(tmp_path):
  import train_throughput  # pylint: disable=import-outside-toplevel
  from prompt_tuning.train.summaries import Writer  # pylint: disable=import-outside-toplevel
  writer = Writer(str(tmp_path / "train"))
  # (steps/s, examples/s, programs so far): step 3 runs a new shape, step 1 is skipped.
  logged = [(0.1, 0.8, 1), (0.5, 4.0, 1), (0.05, 0.4, 2), (0.25, 4.0, 2), (0.5, 6.0, 2)]
  for step, (steps_per_s, examples_per_s, programs) in enumerate(logged, start=1):
    writer.scalars(step, {"timing/steps_per_second": steps_per_s,
                          "timing/examples_per_second": examples_per_s,
                          "timing/compiled_programs": programs})
  writer.close()
  rates = train_throughput.train_rates(str(tmp_path), skip=1)
  # Steps 2, 4, 5: 2 + 4 + 2 seconds for 8 + 16 + 12 examples.
  assert rates["steps"] == 3 and rates["examples"] == 36
  assert np.isclose(rates["examples_per_s"], 36 / 8)
  assert np.isclose(rates["seconds_of_steps_left_out"], 10 + 20)


def test_train_bench_peft_batches_are_random_or_grouped_as_hf_groups_them():
  import train_throughput  # pylint: disable=import-outside-toplevel
  lengths = np.random.default_rng(1).integers(1, 500, 1000)
  plain = train_throughput.peft_batches(lengths, 8, 100, grouped=False, seed=0)
  grouped = train_throughput.peft_batches(lengths, 8, 100, grouped=True, seed=0)
  assert sorted(np.concatenate(plain)) == sorted(np.concatenate(grouped))  # same examples
  assert len(set(np.concatenate(plain))) == 800
  def padded(batches):
    return sum(lengths[b].max() * len(b) for b in batches)
  assert padded(grouped) < 0.8 * padded(plain)
  # Within each mega-batch of 50 batches, longest first.
  first = np.concatenate(grouped[:50])
  assert list(lengths[first]) == sorted(lengths[first], reverse=True)


def test_train_bench_command_is_the_default_run_file_and_parses(tmp_path, monkeypatch):
  import argparse  # pylint: disable=import-outside-toplevel
  import train_throughput  # pylint: disable=import-outside-toplevel
  from prompt_tuning import gin_utils  # pylint: disable=import-outside-toplevel
  from tests.train_helpers import run_cli  # pylint: disable=import-outside-toplevel
  args = argparse.Namespace(data_dir=str(tmp_path), batch_size=8, steps=20, prompt_length=100)
  argv = train_throughput.train_command(args, str(tmp_path / "run"), None)
  assert argv[3:6] == ["train", "--gin_file=models/t5_1_1_small_prompt.gin",
                       "--gin_file=runs/prompt_finetune.gin"]
  assert not [a for a in argv if "PACK" in a or "BUCKET" in a]  # the run file's choice
  monkeypatch.setattr(gin_utils, "call", lambda fn: None)
  code, out = run_cli(argv[3:])
  assert code == 0, out
  packed = train_throughput.train_command(args, str(tmp_path / "run"), True)
  assert "--gin.PACK=True" in packed


def test_arms_alternate_in_rotated_rounds_and_each_round_is_written(tmp_path):
  import bucketing_throughput  # pylint: disable=import-outside-toplevel
  order = []
  def arm(name):
    return lambda: order.append(name) or {"examples_per_s": float(len(order))}
  out = tmp_path / "rounds.json"
  rounds = bucketing_throughput.interleaved_rounds(
      {n: arm(n) for n in "abc"}, 3, lambda r: {"done": min(len(v) for v in r.values())},
      str(out))
  assert order == list("abc" "bca" "cab")
  assert json.loads(out.read_text()) == {"done": 3}
  assert bucketing_throughput.median_rates(rounds) == {"a": 6.0, "b": 4.0, "c": 5.0}
  assert bucketing_throughput.median_rates({"a": [{"error": "x"}]}) == {"a": None}


def test_train_bench_rate_of_a_run_that_only_compiled_is_an_error_line(tmp_path):
  import train_throughput  # pylint: disable=import-outside-toplevel
  from prompt_tuning.train.summaries import Writer  # pylint: disable=import-outside-toplevel
  writer = Writer(str(tmp_path / "train"))
  for step in (1, 2):  # each step a new shape
    writer.scalars(step, {"timing/steps_per_second": 0.1, "timing/examples_per_second": 0.8,
                          "timing/compiled_programs": step})
  writer.close()
  assert "raise --steps" in train_throughput.train_rates(str(tmp_path), skip=0)["error"]
