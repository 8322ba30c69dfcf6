"""Train throughput on realistic lengths: ours bucketed vs ours padded to the maximum vs PEFT.

Lengths follow `bench/boolq_lengths.json` (BoolQ's published means, see the
file). One stream of random-token examples with those lengths is grouped into
batches by `prompt_tuning.data.bucketing` (window of `--window` batches), and
all three runs train on exactly those batches, in that order:

* `ours_bucketed`: each batch cut to the smallest of `--buckets` (default: `BUCKETS='auto'`
  for 512 inputs, four per octave; the trainer's step: `run_setup.compile_train_step`), one
  compile per bucket, done before timing;
* `ours_padded`: every batch padded to `--max_length` (T5X-style fixed shapes);
* `peft`: HF PEFT prompt tuning (`bench/peft_step.py`), each batch padded to
  its longest example (dynamic padding), in `.bench_venv/`.

Each run is its own process; the three alternate (`--repeats` rounds, order
rotated each round) and the median examples/s over rounds is reported. Prints
one JSON line (with `--out`, also writes it there).

On a GPU (`--device cuda`, bench/run_gpu.py) both frameworks run there, in
`--dtype` (bfloat16: activations and frozen weights). The GPU machine has no
TensorFlow, so the batches are grouped here first (`--save_batches FILE`) and
read there (`--batches FILE`).

Usage: python bench/bucketing_throughput.py [--steps 50] [--repeats 3] [--window 8]
       [--peft_python .bench_venv/bin/python] [--device cuda --dtype bfloat16]
       [--save_batches FILE | --batches FILE]
"""
import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run_all import HUGE_PAGES  # pylint: disable=wrong-import-position
LENGTHS_FILE = os.path.join(HERE, "boolq_lengths.json")
VOCAB = 32128


def _compiled_prompt_run(args):
  """(run context, compiled step, (trainable, opt_state, frozen)) of a T5 1.1 `args.size` with
  an `args.prompt_length` prompt, as both timed arms train it."""
  from prompt_tuning.models.config import t5_1_1_config
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts import initializers
  from prompt_tuning.prompts.prompt import Prompt
  from prompt_tuning.train import optim
  from prompt_tuning.train.run_setup import build_run, compile_train_step
  model = T5(t5_1_1_config(args.size, dtype=args.dtype),
             prompt=Prompt(length=args.prompt_length, initializer=initializers.uniform()))
  ctx = build_run(model=model, seed=0,
                  frozen_dtype=None if args.dtype == "float32" else args.dtype)
  split = ctx.split(("prompt/.*",))
  ctx.variables = None
  compiled = compile_train_step(ctx, split, optim.adafactor())
  return ctx, compiled, (split.trainable, compiled.opt_state, split.frozen)


def _timed_steps(compiled, trainable, opt_state, frozen, batches, rng):
  """Seconds of each train step over `batches` (already compiled for their shapes)."""
  import jax
  times = []
  for s, b in enumerate(batches):
    t = time.perf_counter()
    trainable, opt_state, metrics = compiled.step(trainable, opt_state, frozen, b,
                                                  jax.random.fold_in(rng, s))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return times


def sample_lengths(n: int, seed: int, max_length: int, distribution: str = "boolq") -> np.ndarray:
  """`[n]` input lengths drawn from the file's percentiles (linear between them), or from the
  skewed log-normal (median 48, sigma 1.0: a third under 32 tokens, 2% over 400)."""
  if distribution == "skewed":
    drawn = np.random.default_rng(seed).lognormal(np.log(48.0), 1.0, size=n)
    return np.clip(np.rint(drawn), 2, max_length).astype(int)
  with open(LENGTHS_FILE) as f:
    pct = np.asarray(json.load(f)["inputs_percentiles_1_to_99"], np.float64)
  u = np.random.default_rng(seed).uniform(0, len(pct) - 1, size=n)
  return np.minimum(np.rint(np.interp(u, np.arange(len(pct)), pct)), max_length).astype(int)


def make_batches(path: str, steps: int, batch_size: int, window: int, buckets: List[int],
                 max_length: int, targets_length: int, seed: int,
                 distribution: str = "boolq") -> None:
  """Writes `.npz` of the grouped batches (`inputs [S, B, max_length]`, `targets [S, B, T]`,
  `widths [S]`: the bucket of each batch)."""
  import tensorflow as tf
  from prompt_tuning.data import bucketing
  n = steps * batch_size
  n += -n % (window * batch_size)  # whole windows
  rng = np.random.default_rng(seed)
  enc = np.zeros((n, max_length), np.int32)
  for i, length in enumerate(sample_lengths(n, seed, max_length, distribution)):
    enc[i, :length] = rng.integers(3, VOCAB, size=length)
    enc[i, length - 1] = 1  # EOS
  tgt = np.zeros((n, targets_length), np.int32)
  tgt[:, 0], tgt[:, 1] = rng.choice([10998, 10747], size=n), 1  # a label piece + EOS
  dec_in = np.concatenate([np.zeros((n, 1), np.int32), tgt[:, :-1]], axis=1)
  ds = tf.data.Dataset.from_tensor_slices({
      "encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt})
  # Group with the library (window W); the padded and PEFT runs use the same batches.
  grouping = bucketing.LengthBuckets(tuple(buckets), None, window)
  batches = list(bucketing.bucketed_batches(ds, batch_size, grouping, seed))[:steps]
  inputs = np.stack([np.pad(b["encoder_input_tokens"],
                            [(0, 0), (0, max_length - b["encoder_input_tokens"].shape[1])])
                     for b in batches])
  targets = np.stack([b["decoder_target_tokens"] for b in batches])
  widths = np.asarray([b["encoder_input_tokens"].shape[1] for b in batches], np.int32)
  np.savez(path, inputs=inputs, targets=targets, widths=widths)


def batch_stats(path: str) -> Dict[str, Any]:
  """Examples, real and padded input positions of each contender, batches per bucket."""
  data = np.load(path, allow_pickle=False)
  inputs, widths = data["inputs"], data["widths"].tolist()
  steps, batch_size, max_length = inputs.shape
  real = int((inputs > 0).sum())
  return {"examples": steps * batch_size, "real_input_tokens": real,
          "bucket_counts": {str(w): widths.count(w) for w in sorted(set(widths))},
          "padded_input_tokens": {
              "ours_bucketed": int(sum(widths)) * batch_size,
              "ours_padded": steps * batch_size * max_length,
              "peft": int(sum(((inputs[s] > 0).sum(1)).max() for s in range(steps))) * batch_size}}


def run_ours(args) -> Dict[str, Any]:
  """One of our runs over the batches file; `args.mode` is `bucketed` or `padded`."""
  import jax
  from prompt_tuning.data import bucketing

  data = np.load(args.batches, allow_pickle=False)
  ctx, compiled, (trainable, opt_state, frozen) = _compiled_prompt_run(args)
  buckets = bucketing.LengthBuckets(tuple(args.buckets))
  batch_size = data["inputs"].shape[1]

  def batch(s):
    tgt = data["targets"][s]
    b = {"encoder_input_tokens": data["inputs"][s], "decoder_target_tokens": tgt,
         "decoder_input_tokens": np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], 1),
         "decoder_loss_weights": (tgt > 0).astype(np.float32)}
    if args.mode == "bucketed":
      b = bucketing.pad_to_buckets(b, buckets)
    # What `train.data.with_example_index` adds (not imported: it brings SeqIO).
    b["example_index"] = np.arange(s * batch_size, (s + 1) * batch_size, dtype=np.int32)
    return ctx.partitioner.shard_batch(b)

  steps = len(data["inputs"])
  rng = jax.random.PRNGKey(1)
  with ctx.partitioner.context():
    # Compile every shape first (one per bucket): a long run pays it once.
    start, seen = time.perf_counter(), set()
    for s in range(steps):
      b = batch(s)
      shape = b["encoder_input_tokens"].shape
      if shape not in seen:
        seen.add(shape)
        trainable, opt_state, metrics = compiled.step(trainable, opt_state, frozen, b,
                                                      jax.random.fold_in(rng, s))
        jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    batches = [batch(s) for s in range(steps)]
    times = _timed_steps(compiled, trainable, opt_state, frozen, batches, rng)
  return {"compile_and_warmup_s": compile_s, "shapes": len(seen),
          "jit_cache_size": compiled.step._cache_size(), **_rates(times, batch_size)}


def packed_stream(path: str, prompt_length: int, rows: int, targets_length: int):
  """The examples of the batches file, in its order, packed by the library (`PACK = True`):
  `[(packed batch, examples in it)]`."""
  from prompt_tuning.data import packing
  data = np.load(path, allow_pickle=False)
  inputs = data["inputs"].reshape(-1, data["inputs"].shape[-1])
  targets = data["targets"].reshape(-1, data["targets"].shape[-1])
  examples = packing.unpadded({"encoder_input_tokens": inputs, "decoder_target_tokens": targets})
  layout = packing.layout_for({"inputs": inputs.shape[1], "targets": targets_length},
                              prompt_length)
  out = []
  while examples:
    batch, count = packing.pack(examples, rows, layout)
    out.append((batch, count))
    examples = examples[count:]
  return out


def run_packed(args) -> Dict[str, Any]:
  """Our trainer's step on packed rows (`PACK = True`): the batches file's examples packed
  `batch_size` rows at a time; one shape, compiled before timing."""
  import jax

  data = np.load(args.batches, allow_pickle=False)
  ctx, compiled, (trainable, opt_state, frozen) = _compiled_prompt_run(args)
  stream = packed_stream(args.batches, args.prompt_length, data["inputs"].shape[1],
                         data["targets"].shape[-1])
  rng = jax.random.PRNGKey(1)
  with ctx.partitioner.context():
    batches = [ctx.partitioner.shard_batch(b) for b, _ in stream]
    start = time.perf_counter()
    trainable, opt_state, metrics = compiled.step(trainable, opt_state, frozen, batches[0], rng)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = _timed_steps(compiled, trainable, opt_state, frozen, batches, rng)
  examples = sum(c for _, c in stream)
  rates = _rates(times, 1)
  rates["examples_per_s"] = examples / sum(times)
  return {"compile_and_warmup_s": compile_s, "shapes": 1, "rows_per_step": len(batches[0][
      "encoder_input_tokens"]), "examples": examples, "examples_per_row":
      examples / (len(stream) * data["inputs"].shape[1]), **rates}


def run_peft(args) -> Dict[str, Any]:
  import torch
  import peft_step  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  data = np.load(args.batches, allow_pickle=False)
  model, optimizer, _ = peft_step.build(args.prompt_length, args.size, args.device, args.dtype)

  def batch(s):
    inputs = data["inputs"][s]
    width = int((inputs > 0).sum(1).max())  # dynamic padding: the batch's longest example
    inputs = torch.from_numpy(inputs[:, :width].astype(np.int64)).to(args.device)
    labels = torch.from_numpy(data["targets"][s].astype(np.int64)).to(args.device)
    return inputs, (inputs > 0).long(), torch.where(labels > 0, labels, -100)

  batches = [batch(s) for s in range(len(data["inputs"]))]
  t = time.perf_counter()
  peft_step.train_step(model, optimizer, *max(batches, key=lambda b: b[0].shape[1]))  # warm-up
  warm = time.perf_counter() - t
  times = []
  for b in batches:
    t = time.perf_counter()
    peft_step.train_step(model, optimizer, *b)
    times.append(time.perf_counter() - t)
  return {"compile_and_warmup_s": warm, "threads": torch.get_num_threads(),
          **_rates(times, data["inputs"].shape[1])}


def _rates(times: List[float], batch_size: int) -> Dict[str, Any]:
  import resource
  return {"steps": len(times), "examples_per_s": len(times) * batch_size / sum(times),
          "median_step_s": statistics.median(times), "total_s": sum(times),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def run_child(cmd: List[str], threads: int, preload: Optional[str] = None) -> Dict[str, Any]:
  """The last JSON line `cmd` prints (or its error), run with the bench's environment: huge
  pages as run_all.py, `preload` LD_PRELOADed, one pinned core when `threads` is 1."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  if preload:
    if not os.path.exists(preload):
      raise SystemExit(f"--preload {preload}: no such file; install it (e.g. apt-get install "
                       "libtcmalloc-minimal4) or leave --preload out")
    env["LD_PRELOAD"] = preload
  pin = None
  if threads == 1:  # one core for either framework: XLA sizes its pool by the affinity mask
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    core = min(os.sched_getaffinity(0))
    pin = lambda: os.sched_setaffinity(0, {core})
  env.setdefault("GLIBC_TUNABLES", HUGE_PAGES["GLIBC_TUNABLES"])  # as run_all.py, both sides
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=pin)
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  return {"error": ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--window", type=int, default=8,
                      help="batches grouped by length (BUCKET_WINDOW; 1: stream order)")
  parser.add_argument("--buckets", type=int, nargs="+", default=None,
                      help="input buckets, the last one the length examples are cut at "
                      "(default: BUCKETS='auto' for 512 inputs)")
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--targets_length", type=int, default=4)
  parser.add_argument("--size", default="small")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=None,
                      help="threads of both frameworks (default: the CPUs available); 1 also "
                      "pins XLA to one thread. On a loaded machine torch's OpenMP threads slow "
                      "down far more than XLA's (see bench/README.md)")
  parser.add_argument("--peft_python", default=None, help="python of the PEFT venv; none: skip")
  parser.add_argument("--preload", default=None,
                      help="a malloc library LD_PRELOADed into every run, ours and PEFT alike "
                      "(e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4; "
                      "docs/performance.md, \"Host allocator\")")
  parser.add_argument("--out", default=None)
  parser.add_argument("--worker", choices=["bucketed", "padded", "packed", "peft"], default=None)
  parser.add_argument("--arms", nargs="+", default=["packed", "bucketed", "padded"],
                      help="our runs to time (PEFT too with --peft_python)")
  parser.add_argument("--distribution", choices=["boolq", "skewed"], default="boolq",
                      help="input lengths: boolq_lengths.json's percentiles, or skewed: "
                      "log-normal, median 48 tokens, sigma 1.0 (most short, a long tail)")
  parser.add_argument("--batches", default=None,
                      help="grouped batches from --save_batches (default: grouped now)")
  parser.add_argument("--save_batches", default=None,
                      help="only group the batches and write them to this .npz")
  parser.add_argument("--device", default="cpu", help="cpu or cuda (PEFT's torch device)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args()
  args.threads = args.threads or len(os.sched_getaffinity(0))
  if args.buckets is None:
    from prompt_tuning.data import bucketing  # pylint: disable=import-outside-toplevel
    args.buckets = list(bucketing.auto_inputs(512))
  if args.worker:
    args.mode = args.worker
    result = {"peft": run_peft, "packed": run_packed}.get(args.worker, run_ours)(args)
    print(json.dumps(result), flush=True)
    return
  max_length = args.buckets[-1]
  if args.save_batches:
    make_batches(args.save_batches, args.steps, args.batch_size, args.window, args.buckets,
                 max_length, args.targets_length, args.seed, args.distribution)
    print(json.dumps(batch_stats(args.save_batches)), flush=True)
    return
  with tempfile.TemporaryDirectory() as tmp:
    path = args.batches or os.path.join(tmp, "batches.npz")
    if not args.batches:
      make_batches(path, args.steps, args.batch_size, args.window, args.buckets,
                   max_length, args.targets_length, args.seed, args.distribution)
    data = batch_stats(path)
    args.steps, args.batch_size = np.load(path)["inputs"].shape[:2]
    common = ["--batches", path, "--prompt_length", str(args.prompt_length), "--size", args.size,
              "--threads", str(args.threads), "--buckets", *map(str, args.buckets),
              "--device", args.device, "--dtype", args.dtype]
    runs = {f"ours_{arm}": [sys.executable, __file__, "--worker", arm, *common]
            for arm in args.arms}
    if args.peft_python:
      runs["peft"] = [args.peft_python, __file__, "--worker", "peft", *common]
    arms = {name: functools.partial(run_child, cmd, args.threads, args.preload)
            for name, cmd in runs.items()}
    rounds = interleaved_rounds(arms, args.repeats,
                                lambda rounds: _summary(args, data, rounds), args.out)
  print(json.dumps(_summary(args, data, rounds)), flush=True)


def interleaved_rounds(arms: Dict[str, Callable[[], Dict[str, Any]]], repeats: int,
                       summarize: Callable[[Dict[str, List[Dict[str, Any]]]], Dict[str, Any]],
                       out: Optional[str]) -> Dict[str, List[Dict[str, Any]]]:
  """Each arm's results over `repeats` rounds, every arm once a round in an order rotated each
  round; `summarize(rounds)` is written to `out` after every round, so a cut-short run still
  leaves its rounds."""
  rounds: Dict[str, List[Dict[str, Any]]] = {k: [] for k in arms}
  names = list(arms)
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      rounds[name].append(arms[name]())
      print(f"round {r} {name}: {json.dumps(rounds[name][-1])}", file=sys.stderr, flush=True)
    if out:
      with open(out, "w") as f:
        json.dump(summarize(rounds), f, indent=1)
  return rounds


def median_rates(rounds: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Optional[float]]:
  """The median `examples_per_s` of each arm over its rounds that did not fail (None: all did)."""
  medians = {}
  for name, results in rounds.items():
    ok = [x["examples_per_s"] for x in results if "examples_per_s" in x]
    medians[name] = statistics.median(ok) if ok else None
  return medians


def _summary(args, data: Dict[str, Any], rounds: Dict[str, List[Dict[str, Any]]]
             ) -> Dict[str, Any]:
  med = median_rates(rounds)
  summary = {name: {"median_examples_per_s": med[name], "examples_per_s": [
      x["examples_per_s"] for x in results if "examples_per_s" in x], "runs": results}
             for name, results in rounds.items()}
  ratios = {}
  if med.get("ours_bucketed") and med.get("ours_padded"):
    ratios["bucketed_over_padded"] = med["ours_bucketed"] / med["ours_padded"]
  if med.get("ours_bucketed") and med.get("peft"):
    ratios["bucketed_over_peft"] = med["ours_bucketed"] / med["peft"]
  if med.get("ours_packed") and med.get("peft"):
    ratios["packed_over_peft"] = med["ours_packed"] / med["peft"]
  if med.get("ours_packed") and med.get("ours_bucketed"):
    ratios["packed_over_bucketed"] = med["ours_packed"] / med["ours_bucketed"]
  return {"lengths": (os.path.basename(LENGTHS_FILE) if args.distribution == "boolq"
                      else "skewed: log-normal, median 48, sigma 1.0"), "steps": args.steps,
          "rounds_done": min(len(v) for v in rounds.values()), "repeats": args.repeats,
          "batch_size": args.batch_size, "window": args.window, "buckets": args.buckets,
          "prompt_length": args.prompt_length, "targets_length": args.targets_length,
          "size": args.size, "threads": args.threads, "device": args.device, "dtype": args.dtype,
          "preload": args.preload,
          "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **data, "ratios": ratios, **summary}


if __name__ == "__main__":
  main()
