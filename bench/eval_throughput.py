"""Evaluation throughput of a random T5 1.1: rank classification vs greedy decoding.

Rank classification scores each of `--classes` candidate targets with one
teacher-forced forward pass (what `prompt-tuning score` does); greedy decoding
runs the encoder once and the decoder `--targets_length` times with a KV cache.
Prints one JSON line with examples/s of each.
"""
import argparse
import json
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


def _timed(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / repeats


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="small")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--inputs_length", type=int, default=128)
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--targets_length", type=int, default=8)
  parser.add_argument("--classes", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  config = t5_1_1_config(args.size)
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

  enc = jnp.asarray(batch["encoder_input_tokens"][:args.batch_size])
  score_s = _timed(lambda: score(variables, batch), args.repeats)
  greedy_s = _timed(lambda: greedy(variables["params"], enc), args.repeats)
  print(json.dumps({
      "benchmark": "eval_throughput", "size": args.size, "batch_size": args.batch_size,
      "inputs_length": args.inputs_length, "prompt_length": args.prompt_length,
      "targets_length": args.targets_length, "classes": args.classes,
      "rank_classification_examples_per_s": args.batch_size / score_s,
      "greedy_decoding_examples_per_s": args.batch_size / greedy_s,
  }), flush=True)


if __name__ == "__main__":
  main()
