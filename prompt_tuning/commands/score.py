"""`prompt-tuning score`: log-likelihood of each example's targets given its inputs.

Each output line is the input object plus `log_likelihood` (the sum over the
target tokens, EOS appended as SeqIO does, of log p(token)) and
`num_target_tokens`. Comparing `log_likelihood` across candidate targets of
the same inputs is rank classification. `--prompt` prepends a tuned prompt
(`.npy` or a PEFT adapter) to every input, as in training.
"""
import argparse
from typing import Any, Dict, List

import numpy as np

from prompt_tuning.data import jsonl
from prompt_tuning.errors import UserError
from prompt_tuning.train.summaries import Progress


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags shared by `score` and `generate`."""
  parser.add_argument("--checkpoint", required=True,
                      help="backbone folder written by `prompt-tuning convert`")
  parser.add_argument("--vocab", required=True, help="SentencePiece model file")
  parser.add_argument("--inputs_file", required=True, help="JSONL file, one object per line")
  parser.add_argument("--prompt", default=None,
                      help="a tuned prompt to prepend to every input: MODEL_DIR/prompts/step_N.npy "
                      "or a Hugging Face PEFT prompt-tuning adapter (folder or .safetensors)")
  parser.add_argument("--output", default=None, help="output JSONL file (default: stdout)")
  parser.add_argument("--batch_size", type=int, default=32,
                      help="examples per compiled batch (the last batch is padded)")
  parser.add_argument("--extra_ids", type=int, default=jsonl.DEFAULT_EXTRA_IDS,
                      help="sentinel ids appended to the vocabulary (T5: 100)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_common_arguments(parser)


def check_common_arguments(args: argparse.Namespace) -> None:
  """Cheap checks first, so a typo fails before the model loads."""
  if args.batch_size < 1:
    raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
  if args.extra_ids < 0:
    raise UserError(f"--extra_ids must be >= 0, got {args.extra_ids}")
  if args.output is not None:
    from prompt_tuning import checks
    checks.output_file(args.output, "--output")
  from prompt_tuning.io.backbone import read_backbone_metadata
  read_backbone_metadata(args.checkpoint)
  if args.prompt is not None:
    from prompt_tuning.prompts.files import read_prompt
    read_prompt(args.prompt, "--prompt")


def run(args: argparse.Namespace) -> int:
  check_common_arguments(args)
  examples = jsonl.read_examples(args.inputs_file, ("inputs", "targets"))
  vocab = jsonl.load_vocabulary(args.vocab, args.extra_ids)
  inputs = jsonl.tokenize(vocab, (e["inputs"] for e in examples))
  targets = jsonl.tokenize(vocab, (e["targets"] for e in examples))

  from prompt_tuning.models.inference import length_sorted_batches
  from prompt_tuning.prompts.tuned_model import load_tuned_model
  model = load_tuned_model(args.checkpoint, args.prompt)
  jsonl.check_token_range(inputs + targets, model.vocab_size, args.vocab)

  log_likelihoods = np.zeros(len(examples), np.float64)
  progress = Progress(0, len(examples), "score")
  lengths = [len(i) + len(t) for i, t in zip(inputs, targets)]
  for batch in length_sorted_batches(lengths, args.batch_size):
    input_tokens, _ = jsonl.pad_sequences(
        [inputs[i] for i in batch], jsonl.bucket_length(max(len(inputs[i]) for i in batch)),
        args.batch_size)
    target_tokens, target_lengths = jsonl.pad_sequences(
        [targets[i] for i in batch], jsonl.bucket_length(max(len(targets[i]) for i in batch)),
        args.batch_size)
    # Weights from lengths, not `tokens > 0`: the batch's filler rows weigh nothing.
    weights = np.arange(target_tokens.shape[1])[None, :] < target_lengths[:, None]
    scores = model.score(input_tokens, target_tokens, weights)
    log_likelihoods[batch] = scores[:len(batch)]
    progress.update(len(batch))

  records: List[Dict[str, Any]] = [
      {**example, "log_likelihood": float(ll), "num_target_tokens": len(t)}
      for example, ll, t in zip(examples, log_likelihoods, targets)]
  jsonl.write_examples(records, args.output)
  return 0
