"""`prompt-tuning generate`: decode each example's inputs (greedy, beam or sampling).

Each output line is the input object plus `prediction` (the decoded text, up
to EOS). Greedy by default; `--beam_size N` runs beam search with length
penalty `--alpha`; `--temperature T > 0` samples (optionally among `--topk`).
`--prompt` prepends a tuned prompt (`.npy` or a PEFT adapter) to every input.
"""
import argparse

import numpy as np

from prompt_tuning import checks
from prompt_tuning.commands.score import (add_common_arguments, check_batches_fit,
                                          check_common_arguments, truncated_inputs)
from prompt_tuning.train.summaries import Progress
from prompt_tuning.data import jsonl
from prompt_tuning.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_common_arguments(parser)
  parser.add_argument("--max_decode_length", type=checks.int_flag(1), default=64,
                      help="most tokens generated per example, EOS included")
  parser.add_argument("--beam_size", type=checks.int_flag(1), default=1,
                      help="1 = greedy; >1 = beam search")
  parser.add_argument("--alpha", type=checks.float_flag(at_least=0), default=0.6,
                      help="beam-search length penalty exponent ((5 + len) / 6) ** alpha")
  parser.add_argument("--temperature", type=checks.float_flag(at_least=0), default=0.0,
                      help="0 = greedy/beam; > 0 samples from softmax(logits / T)")
  parser.add_argument("--topk", type=checks.int_flag(0), default=0,
                      help="sample among the k likeliest tokens")
  parser.add_argument("--seed", type=checks.SEED_FLAG, default=0, help="sampling seed")


def _check_decoding_arguments(args: argparse.Namespace) -> None:
  if args.beam_size > 1 and args.temperature > 0:
    raise UserError("choose beam search (--beam_size > 1) or sampling (--temperature > 0), "
                    "not both")
  if args.topk > 0 and args.temperature == 0:
    raise UserError("--topk only applies to sampling; add --temperature T (T > 0)")


def run(args: argparse.Namespace) -> int:
  _check_decoding_arguments(args)
  config, prompt_length = check_common_arguments(args)
  if args.topk > config.vocab_size:
    raise UserError(f"--topk {args.topk} is more than the model's {config.vocab_size} tokens; "
                    "choose at most that many")
  examples = jsonl.read_examples(args.inputs_file, ("inputs",))
  vocab = jsonl.load_vocabulary(args.vocab, args.extra_ids)
  inputs = truncated_inputs(jsonl.tokenize(vocab, (e["inputs"] for e in examples)),
                            args.max_input_length, args.inputs_file)

  import jax
  from prompt_tuning.models.inference import length_sorted_batches
  from prompt_tuning.prompts.tuned_model import load_tuned_model
  batches = length_sorted_batches([len(i) for i in inputs], args.batch_size)
  check_batches_fit(config, prompt_length, batches, inputs, args.batch_size,
                    lambda b: args.max_decode_length, True, args.inputs_file, args.beam_size)
  model = load_tuned_model(args.checkpoint, args.prompt)
  jsonl.check_token_range(inputs, model.vocab_size, args.vocab)

  predictions = [""] * len(examples)
  progress = Progress(0, len(examples), "generate")
  seed = jax.random.PRNGKey(args.seed)
  for number, batch in enumerate(batches):
    input_tokens, _ = jsonl.pad_sequences(
        [inputs[i] for i in batch], jsonl.bucket_length(max(len(inputs[i]) for i in batch)),
        args.batch_size)
    tokens, _ = model.generate(
        input_tokens, max_decode_length=args.max_decode_length, beam_size=args.beam_size,
        alpha=args.alpha, temperature=args.temperature, topk=args.topk,
        rng=jax.random.fold_in(seed, number))
    for row, index in enumerate(batch):
      predictions[index] = vocab.decode(np.asarray(tokens[row]).tolist())
    progress.update(len(batch))

  jsonl.write_examples(({**e, "prediction": p} for e, p in zip(examples, predictions)), args.output)
  return 0
