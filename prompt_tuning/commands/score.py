"""`prompt-tuning score`: log-likelihood of each example's targets given its inputs.

Each output line is the input object plus `log_likelihood` (the sum over the
target tokens, EOS appended as SeqIO does, of log p(token)) and
`num_target_tokens`. Comparing `log_likelihood` across candidate targets of
the same inputs is rank classification. `--prompt` prepends a tuned prompt
(`.npy` or a PEFT adapter) to every input, as in training.

Lengths, as in T5X: `--max_input_length N` truncates longer inputs to N
tokens (EOS kept last, as SeqIO trims to `TASK_FEATURE_LENGTHS`), with one
warning line counting them; without it nothing is truncated, and targets never
are (a truncated target's score is another target's). Either way the largest
batch must fit the machine's memory (`models.memory_bound`), which is checked
before the model loads.
"""
import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from prompt_tuning import checks
from prompt_tuning.data import jsonl
from prompt_tuning.models import memory_bound
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
  parser.add_argument("--batch_size", type=checks.int_flag(1), default=32,
                      help="examples per compiled batch (the last batch is padded)")
  parser.add_argument("--extra_ids", type=checks.int_flag(0), default=jsonl.DEFAULT_EXTRA_IDS,
                      help="sentinel ids appended to the vocabulary (T5: 100)")
  parser.add_argument("--max_input_length", type=checks.int_flag(1), default=None,
                      help="truncate longer inputs to this many tokens, EOS included, as T5X "
                      "truncates to TASK_FEATURE_LENGTHS['inputs'] (default: no truncation)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_common_arguments(parser)


def check_common_arguments(args: argparse.Namespace):
  """Cheap checks first, so a typo fails before the model loads; (backbone config, prompt
  length)."""
  if args.output is not None:
    checks.output_file(args.output, "--output")
  from prompt_tuning.io.backbone import load_backbone_config
  config = load_backbone_config(args.checkpoint)
  prompt_length = 0
  if args.prompt is not None:
    from prompt_tuning.prompts.files import read_prompt
    prompt_length = read_prompt(args.prompt, "--prompt").shape[0]
  return config, prompt_length


def truncated_inputs(inputs: List[List[int]], max_length: Optional[int], path: str
                     ) -> List[List[int]]:
  """`inputs` cut to `max_length` tokens, EOS kept last (SeqIO's trim, then EOS), with one
  warning line when any was longer; unchanged without `max_length`."""
  if max_length is None:
    return inputs
  longer = [i for i, tokens in enumerate(inputs) if len(tokens) > max_length]
  if longer:
    print(f"warning: {len(longer)} of {len(inputs)} inputs of {path} are longer than "
          f"--max_input_length {max_length} and were truncated to it (the longest "
          f"{max(len(inputs[i]) for i in longer):,} tokens), as T5X truncates to "
          "TASK_FEATURE_LENGTHS", file=sys.stderr, flush=True)
  return [t if len(t) <= max_length else t[:max_length - 1] + t[-1:] for t in inputs]


def check_batches_fit(config, prompt_length: int, batches: Sequence[np.ndarray],
                      inputs: List[List[int]], rows: int, decoder_length, decoding: bool,
                      path: str, beams: int = 1) -> None:
  """Refuses the run, before the model loads, when a padded batch cannot fit in memory.

  Args:
    rows: rows of each compiled batch.
    decoder_length: batch indices -> decoder positions of that batch.
    beams: sequences decoded per row.
  """
  for batch in batches:
    longest = max(batch, key=lambda i: len(inputs[i]))
    shape = memory_bound.Pass(rows, jsonl.bucket_length(len(inputs[longest])) + prompt_length,
                              decoder_length(batch), decoding, beams)
    memory_bound.check_fits(
        config, shape, f"the batch holding example {longest + 1} of {path} "
        f"({len(inputs[longest]):,} input tokens)",
        ("lower --max_decode_length, --beam_size or --batch_size, or truncate inputs with "
         "--max_input_length" if decoding else
         "truncate inputs with --max_input_length (e.g. 512, as T5X truncates to "
         "TASK_FEATURE_LENGTHS), shorten the longest examples, or lower --batch_size"))


def run(args: argparse.Namespace) -> int:
  config, prompt_length = check_common_arguments(args)
  examples = jsonl.read_examples(args.inputs_file, ("inputs", "targets"))
  vocab = jsonl.load_vocabulary(args.vocab, args.extra_ids)
  inputs = truncated_inputs(jsonl.tokenize(vocab, (e["inputs"] for e in examples)),
                            args.max_input_length, args.inputs_file)
  targets = jsonl.tokenize(vocab, (e["targets"] for e in examples))

  from prompt_tuning.models.inference import length_sorted_batches
  from prompt_tuning.prompts.tuned_model import load_tuned_model
  lengths = [len(i) + len(t) for i, t in zip(inputs, targets)]
  batches = length_sorted_batches(lengths, args.batch_size)
  check_batches_fit(config, prompt_length, batches, inputs, args.batch_size,
                    lambda b: jsonl.bucket_length(max(len(targets[i]) for i in b)), False,
                    args.inputs_file)
  model = load_tuned_model(args.checkpoint, args.prompt)
  jsonl.check_token_range(inputs + targets, model.vocab_size, args.vocab)

  log_likelihoods = np.zeros(len(examples), np.float64)
  progress = Progress(0, len(examples), "score")
  for batch in batches:
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
