"""`prompt-tuning generate`: decode each example's inputs (greedy, beam or sampling).

Each output line is the input object plus `prediction` (the decoded text, up
to EOS). Greedy by default; `--beam_size N` runs beam search with length
penalty `--alpha`; `--temperature T > 0` samples (optionally among `--topk`).
`--prompt` prepends a tuned prompt (`.npy` or a PEFT adapter) to every input.
"""
import argparse

import numpy as np

from prompt_tuning.commands.score import add_common_arguments, check_common_arguments
from prompt_tuning.train.summaries import Progress
from prompt_tuning.data import jsonl
from prompt_tuning.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_common_arguments(parser)
  parser.add_argument("--max_decode_length", type=int, default=64,
                      help="most tokens generated per example, EOS included")
  parser.add_argument("--beam_size", type=int, default=1, help="1 = greedy; >1 = beam search")
  parser.add_argument("--alpha", type=float, default=0.6,
                      help="beam-search length penalty exponent ((5 + len) / 6) ** alpha")
  parser.add_argument("--temperature", type=float, default=0.0,
                      help="0 = greedy/beam; > 0 samples from softmax(logits / T)")
  parser.add_argument("--topk", type=int, default=0, help="sample among the k likeliest tokens")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed")


def _check_decoding_arguments(args: argparse.Namespace) -> None:
  if args.max_decode_length < 1:
    raise UserError(f"--max_decode_length must be at least 1, got {args.max_decode_length}")
  if args.beam_size < 1:
    raise UserError(f"--beam_size must be at least 1, got {args.beam_size}")
  if args.temperature < 0:
    raise UserError(f"--temperature must be >= 0, got {args.temperature}")
  if args.beam_size > 1 and args.temperature > 0:
    raise UserError("choose beam search (--beam_size > 1) or sampling (--temperature > 0), "
                    "not both")
  if args.topk < 0:
    raise UserError(f"--topk must be >= 0, got {args.topk}")
  if args.topk > 0 and args.temperature == 0:
    raise UserError("--topk only applies to sampling; add --temperature T (T > 0)")


def run(args: argparse.Namespace) -> int:
  _check_decoding_arguments(args)
  check_common_arguments(args)
  examples = jsonl.read_examples(args.inputs_file, ("inputs",))
  vocab = jsonl.load_vocabulary(args.vocab, args.extra_ids)
  inputs = jsonl.tokenize(vocab, (e["inputs"] for e in examples))

  import jax
  from prompt_tuning.models.inference import length_sorted_batches
  from prompt_tuning.prompts.tuned_model import load_tuned_model
  model = load_tuned_model(args.checkpoint, args.prompt)
  jsonl.check_token_range(inputs, model.vocab_size, args.vocab)

  predictions = [""] * len(examples)
  progress = Progress(0, len(examples), "generate")
  seed = jax.random.PRNGKey(args.seed)
  for number, batch in enumerate(length_sorted_batches([len(i) for i in inputs], args.batch_size)):
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
