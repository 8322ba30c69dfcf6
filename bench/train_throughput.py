"""Train examples/s end to end: `prompt-tuning train` with the default run file vs HF PEFT.

What a user runs, timed as a user would see it: a local BoolQ (`DATA_DIR`, the
official file layout) whose passages are random words with realistic lengths
(`--distribution boolq`: `bench/boolq_lengths.json`; `skewed`: log-normal,
median 48 tokens, sigma 1.0), and

* `ours_default`: `prompt-tuning train --gin_file=models/t5_1_1_small_prompt.gin
  --gin_file=runs/prompt_finetune.gin` with `BATCH_SIZE`, `TRAIN_STEPS` and the data
  set, nothing else (float32 activations on CPU, as PEFT; a random backbone: speed
  does not depend on the weights). Whatever the run file's defaults choose
  (`PACK = 'auto'`, `BUCKETS = 'auto'`, `DROPOUT_RATE = 0.1`) is what is timed;
* `ours_other`: the same with the other of packing and length bucketing (`--gin.PACK`), so
  the default is shown to be the faster of the two;
* `peft`: HF PEFT prompt tuning (`bench/peft_step.py`, dropout 0.1 as T5's) on the same
  tokenized examples in a random order, each batch padded to its longest example
  (dynamic padding: HF's default collator and sampler);
* `peft_grouped`: the same with HF's `group_by_length` (batches drawn from mega-batches of
  50 batches sorted by length), PEFT's own remedy for padding.

Rates: ours from the run's TensorBoard `timing/examples_per_second` (every step
logged; evaluation off; the first `--skip` steps and every step that ran a new
batch shape (`timing/compiled_programs` grew) left out: those compile, or load
from the JAX cache the arms share, once per shape, which a real run amortises);
PEFT from its own step times, after one warm-up step. Arms
alternate within each of `--repeats` rounds (order rotated); medians over
rounds. Prints one JSON line (`--out`: also written there after every round).

Usage: python bench/train_throughput.py [--distribution boolq] [--steps 30] [--repeats 3]
       [--batch_size 8] [--peft_python .bench_venv/bin/python] [--out FILE]
"""
import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bucketing_throughput import (  # pylint: disable=wrong-import-position
    interleaved_rounds, median_rates, run_child, sample_lengths)
from run_all import HUGE_PAGES  # pylint: disable=wrong-import-position

TASK = "super_glue_boolq"
FEATURE_LENGTHS = {"inputs": 512, "targets": 8}  # runs/prompt_finetune.gin's
SHARED_VOCAB = os.path.join(REPO, "..", "shared", "data", "t5_vocab", "sentencepiece.model")
# HF Trainer's LengthGroupedSampler: mega-batches of this many batches, sorted by length.
HF_MEGABATCH = 50


def vocab_path() -> str:
  path = os.environ.get("PROMPT_TUNING_VOCAB") or SHARED_VOCAB
  if not os.path.exists(path):
    raise SystemExit(f"no T5 vocabulary at {path}: set PROMPT_TUNING_VOCAB to a local copy of "
                     "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model")
  return os.path.abspath(path)


def write_boolq(data_dir: str, examples: int, distribution: str, seed: int) -> None:
  """`data_dir/super_glue/BoolQ/{train,val}.jsonl`: passages of random whole words, as many
  as the drawn input length leaves after a 9-word question and the task's format pieces."""
  import sentencepiece
  sp = sentencepiece.SentencePieceProcessor(model_file=vocab_path())
  words = [sp.id_to_piece(i)[1:] for i in range(3, 32000)
           if sp.id_to_piece(i).startswith("\u2581") and sp.id_to_piece(i)[1:].isalpha()
           and len(sp.id_to_piece(i)) > 3]
  rng = np.random.default_rng(seed)
  folder = os.path.join(data_dir, "super_glue", "BoolQ")
  os.makedirs(folder, exist_ok=True)
  lengths = sample_lengths(examples, seed, FEATURE_LENGTHS["inputs"], distribution)
  for split, count in (("train", examples), ("val", 16)):
    with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
      for i in range(count):
        passage = " ".join(rng.choice(words, size=max(int(lengths[i]) - 15, 1)))
        question = " ".join(rng.choice(words, size=9))
        f.write(json.dumps({"question": question, "passage": passage, "idx": i,
                            "label": bool(rng.integers(2))}) + "\n")


def tokenized(data_dir: str, path: str, examples: int) -> Dict[str, Any]:
  """The task's tokenized train examples (what `train` reads, before shuffling) to `.npz`
  (`inputs [N, 512]`, `targets [N, 8]`, zero-padded); their length statistics."""
  os.environ["PROMPT_TUNING_DATA_DIR"] = data_dir
  os.environ["PROMPT_TUNING_VOCAB"] = vocab_path()
  import importlib
  import seqio
  importlib.import_module("prompt_tuning.tasks")  # registers the task
  ds = seqio.get_mixture_or_task(TASK).get_dataset(FEATURE_LENGTHS, split="train",
                                                   shuffle=False)
  inputs = np.zeros((examples, FEATURE_LENGTHS["inputs"]), np.int32)
  targets = np.zeros((examples, FEATURE_LENGTHS["targets"]), np.int32)
  for i, ex in enumerate(ds.take(examples).as_numpy_iterator()):
    x, y = ex["inputs"][:FEATURE_LENGTHS["inputs"]], ex["targets"][:FEATURE_LENGTHS["targets"]]
    inputs[i, :len(x)], targets[i, :len(y)] = x, y
  np.savez(path, inputs=inputs, targets=targets)
  lengths = (inputs > 0).sum(1)
  return {"examples": examples, "mean_input_tokens": float(lengths.mean()),
          "input_tokens_percentiles_10_50_90_99": np.percentile(lengths, [10, 50, 90, 99]).tolist()}


def peft_batches(lengths: np.ndarray, batch_size: int, steps: int, grouped: bool,
                 seed: int) -> List[np.ndarray]:
  """Example indices of each PEFT batch: a random order (HF's default sampler), or HF's
  `group_by_length` (each mega-batch of `HF_MEGABATCH` batches sorted longest first)."""
  order = np.random.default_rng(seed).permutation(len(lengths))[:steps * batch_size]
  if grouped:
    mega = HF_MEGABATCH * batch_size
    order = np.concatenate([sorted(order[i:i + mega], key=lambda j: -lengths[j])
                            for i in range(0, len(order), mega)])
  return [order[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


def run_peft(args) -> Dict[str, Any]:
  import torch
  import peft_step  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  data = np.load(args.tokens, allow_pickle=False)
  lengths = (data["inputs"] > 0).sum(1)
  model, optimizer, _ = peft_step.build(args.prompt_length, "small", dropout=0.1)

  def batch(rows):
    width = int(lengths[rows].max())  # dynamic padding: the batch's longest example
    inputs = torch.from_numpy(data["inputs"][rows, :width].astype(np.int64))
    labels = torch.from_numpy(data["targets"][rows].astype(np.int64))
    return inputs, (inputs > 0).long(), torch.where(labels > 0, labels, -100)

  batches = [batch(rows) for rows in peft_batches(lengths, args.batch_size, args.steps,
                                                  args.worker == "peft_grouped", args.seed)]
  peft_step.train_step(model, optimizer, *max(batches, key=lambda b: b[0].shape[1]))  # warm-up
  times = []
  for b in batches:
    start = time.perf_counter()
    peft_step.train_step(model, optimizer, *b)
    times.append(time.perf_counter() - start)
  examples = len(batches) * args.batch_size
  return {"examples_per_s": examples / sum(times), "steps": len(times), "examples": examples,
          "input_positions_per_example": float(sum(b[0].numel() for b in batches) / examples)
          + args.prompt_length, "threads": torch.get_num_threads()}


def train_command(args, model_dir: str, pack: Optional[bool]) -> List[str]:
  """`prompt-tuning train` as the run file's header shows it, with the bench's data and sizes
  (`pack`: None keeps the run file's `PACK`)."""
  gin = {"MODEL_DIR": repr(model_dir), "MIXTURE_OR_TASK_NAME": repr(TASK),
         "INITIAL_CHECKPOINT_PATH": "None", "DATA_DIR": repr(args.data_dir),
         "BATCH_SIZE": args.batch_size, "TRAIN_STEPS": args.steps, "EVAL_PERIOD": "None",
         "CHECKPOINT_PERIOD": args.steps, "PROMPT_LENGTH": args.prompt_length,
         "ACTIVATION_DTYPE": "'float32'", "train.log_every": 1}
  if pack is not None:
    gin["PACK"] = pack
  return [sys.executable, "-m", "prompt_tuning", "train",
          "--gin_file=models/t5_1_1_small_prompt.gin", "--gin_file=runs/prompt_finetune.gin",
          *[f"--gin.{k}={v}" for k, v in gin.items()]]


def train_rates(model_dir: str, skip: int) -> Dict[str, Any]:
  """Examples/s of a finished run from its TensorBoard timing scalars (every step logged):
  the steps after the first `skip`, less those that ran a new batch shape (compiled, or
  loaded from the cache, once per shape: amortised in a real run)."""
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(os.path.join(model_dir, "train"))
  events.Reload()

  def scalars(tag):
    return {e.step: e.value for e in events.Scalars(tag)}
  steps, examples = scalars("timing/steps_per_second"), scalars("timing/examples_per_second")
  programs = scalars("timing/compiled_programs")
  timed = [s for s in sorted(steps) if s > skip and programs[s] == programs.get(s - 1)]
  if not timed:  # one result line of the arm, as a failed run gives
    return {"error": f"every logged step after the first {skip} ran a new batch shape; raise "
                     "--steps"}
  seconds = sum(1.0 / steps[s] for s in timed)
  trained = sum(examples[s] / steps[s] for s in timed)
  return {"examples_per_s": trained / seconds, "steps": len(timed), "examples": round(trained),
          "examples_per_step": trained / len(timed), "programs": int(max(programs.values())),
          "seconds_of_steps_left_out": sum(1.0 / steps[s] for s in steps if s not in timed)}


def run_ours(args, pack: Optional[bool], cache: str) -> Dict[str, Any]:
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = os.path.join(tmp, "run")
    env = {**os.environ, **HUGE_PAGES, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PROMPT_TUNING_VOCAB": vocab_path(), "JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    start = time.time()
    proc = subprocess.run(train_command(args, model_dir, pack), cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
      return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    mode = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines()
            if "pack" in line.lower() or "bucket" in line.lower()][:2]
    result = {"process_wall_s": round(time.time() - start, 1), "says": mode}
    return {**train_rates(model_dir, args.skip), **result}


def default_packs() -> bool:
  """Whether the run file's `PACK = 'auto'` packs on this machine (`train`'s own decision)."""
  from prompt_tuning.train import packed_runs  # pylint: disable=import-outside-toplevel
  return packed_runs.resolve_pack(packed_runs.AUTO)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--distribution", choices=["boolq", "skewed"], default="boolq")
  parser.add_argument("--steps", type=int, default=30, help="train steps of every arm")
  parser.add_argument("--skip", type=int, default=2, help="first steps of ours left out")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=None)
  parser.add_argument("--peft_python", default=None, help="python of the PEFT venv; none: skip")
  parser.add_argument("--out", default=None)
  parser.add_argument("--worker", choices=["peft", "peft_grouped"], default=None)
  parser.add_argument("--tokens", default=None)
  args = parser.parse_args()
  args.threads = args.threads or len(os.sched_getaffinity(0))
  if args.worker:
    print(json.dumps(run_peft(args)), flush=True)
    return
  # Enough examples that no arm wraps around (packed rows hold up to ~3.5 skewed examples).
  examples = 4 * FEATURE_LENGTHS["inputs"] // 100 * args.batch_size * args.steps
  with tempfile.TemporaryDirectory() as tmp:
    args.data_dir = os.path.join(tmp, "data")
    write_boolq(args.data_dir, examples, args.distribution, args.seed)
    tokens = os.path.join(tmp, "tokens.npz")
    data = tokenized(args.data_dir, tokens, examples)
    packs = default_packs()
    cache = os.path.join(tmp, "jax_cache")
    arms = {"ours_default": lambda: run_ours(args, None, cache),
            "ours_other": lambda: run_ours(args, not packs, cache)}
    if args.peft_python:
      for name in ("peft", "peft_grouped"):
        cmd = [args.peft_python, __file__, "--worker", name, "--tokens", tokens,
               "--steps", str(args.steps), "--batch_size", str(args.batch_size),
               "--prompt_length", str(args.prompt_length), "--threads", str(args.threads),
               "--seed", str(args.seed)]
        arms[name] = functools.partial(run_child, cmd, args.threads)
    rounds = interleaved_rounds(arms, args.repeats,
                                lambda rounds: summary(args, data, packs, rounds), args.out)
  print(json.dumps(summary(args, data, packs, rounds)), flush=True)


def summary(args, data: Dict[str, Any], packs: bool,
            rounds: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
  medians = median_rates(rounds)
  ratios = {f"ours_default_over_{name}": medians["ours_default"] / medians[name]
            for name in medians if name != "ours_default" and medians[name]
            and medians["ours_default"]}
  return {"distribution": args.distribution, "steps": args.steps, "skip": args.skip,
          "repeats": args.repeats, "batch_size": args.batch_size,
          "prompt_length": args.prompt_length, "threads": args.threads,
          "default_packs": packs, "ours_other": "buckets (PACK=False)" if packs else "PACK=True",
          "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "data": data,
          "median_examples_per_s": medians, "ratios": ratios, "rounds": rounds}


if __name__ == "__main__":
  main()
