"""Evaluation throughput of a random T5 1.1: rank classification vs greedy decoding.

Three ways to evaluate `--batch_size` examples, timed interleaved (one call of
each per round, medians over `--repeats` rounds):

* one-pass rank classification (what evaluation does, `train/rank_scoring.py`):
  the encoder once per example, then one decoder pass scoring all `--classes`
  candidate targets packed side by side;
* per-class rank classification (T5X's way, and ours before): one full
  teacher-forced forward pass per (example, candidate) row;
* greedy decoding: the encoder once, the decoder `--targets_length` times with a
  KV cache.

Prints one JSON line with examples/s of each.
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.commands.bench import random_batch
from prompt_tuning.models import decoding, losses
from prompt_tuning.models.config import t5_1_1_config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.train import rank_scoring


def _interleaved(fns, repeats: int):
  """Median seconds per call of each of `fns`, one call of each per round."""
  for fn in fns.values():
    jax.block_until_ready(fn())  # compile
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="small")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--inputs_length", type=int, default=128)
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--targets_length", type=int, default=8)
  parser.add_argument("--classes", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", help="activation dtype (float32, bfloat16)")
  args = parser.parse_args()
  config = t5_1_1_config(args.size, dtype=args.dtype)
  model = T5(config, prompt=Prompt(length=args.prompt_length, initializer=initializers.uniform()))
  batch = random_batch(np.random.default_rng(0), args.batch_size * args.classes,
                       args.inputs_length, args.targets_length, config.vocab_size)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch["encoder_input_tokens"][:1],
                                  batch["decoder_input_tokens"][:1])

  @jax.jit
  def score(variables, b):
    logits = model.apply(variables, b["encoder_input_tokens"], b["decoder_input_tokens"])
    return losses.sequence_log_likelihood(logits, b["decoder_target_tokens"],
                                          b["decoder_loss_weights"])

  @jax.jit
  def greedy(params, tokens):
    return decoding.generate(model, params, tokens, max_decode_length=args.targets_length)[0]

  @jax.jit
  def one_pass(variables, b):
    return rank_scoring.packed_scores(model, variables, b)

  # The same rows grouped per example: row e * classes + c is candidate c of example e.
  grouped = {"encoder_input_tokens": batch["encoder_input_tokens"][::args.classes]}
  batch["encoder_input_tokens"] = np.repeat(grouped["encoder_input_tokens"], args.classes, axis=0)
  for key in rank_scoring.DECODER_KEYS:
    grouped[key] = batch[key].reshape(args.batch_size, args.classes, -1)
  enc = jnp.asarray(grouped["encoder_input_tokens"])
  seconds = _interleaved({
      "one_pass": lambda: one_pass(variables, grouped),
      "per_class": lambda: score(variables, batch),
      "greedy": lambda: greedy(variables["params"], enc)}, args.repeats)
  one_pass_scores = np.asarray(one_pass(variables, grouped)).reshape(-1)
  per_class_scores = np.asarray(score(variables, batch))
  if jax.default_backend() == "cpu" and args.dtype == "float32":
    np.testing.assert_allclose(one_pass_scores, per_class_scores, rtol=1e-4, atol=1e-3)
  # Elsewhere (TF32 or bf16 matmuls) the two orders of summation differ more; reported only.
  rates = {name: args.batch_size / s for name, s in seconds.items()}
  print(json.dumps({
      "benchmark": "eval_throughput", "size": args.size, "batch_size": args.batch_size,
      "inputs_length": args.inputs_length, "prompt_length": args.prompt_length,
      "targets_length": args.targets_length, "classes": args.classes, "repeats": args.repeats,
      "rank_classification_examples_per_s": rates["one_pass"],
      "rank_classification_per_class_examples_per_s": rates["per_class"],
      "greedy_decoding_examples_per_s": rates["greedy"],
      "one_pass_over_per_class": rates["one_pass"] / rates["per_class"],
      "one_pass_over_greedy": rates["one_pass"] / rates["greedy"],
      "max_abs_score_difference": float(np.max(np.abs(one_pass_scores - per_class_scores))),
      "dtype": args.dtype, "device": jax.devices()[0].device_kind,
  }), flush=True)


if __name__ == "__main__":
  main()
