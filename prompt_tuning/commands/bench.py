"""`prompt-tuning bench`: time one prompt-tuning train step of a randomly initialized T5 1.1.

Prints one JSON line: median step time, compile time, peak RSS, and the
model FLOPs of the step from XLA's cost analysis. The backbone is random (the
step's cost does not depend on the weights), float32 unless `--frozen_dtype`.
"""
import json
import resource
import statistics
import sys
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from prompt_tuning import checks, host_memory


def add_arguments(parser) -> None:
  parser.add_argument("--size", default="small",
                      help="T5 1.1 size of the random backbone: small, base, large, xl, xxl "
                      "(default: small)")
  parser.add_argument("--batch_size", type=checks.int_flag(1), default=8,
                      help="global batch of the timed step (default: 8)")
  parser.add_argument("--inputs_length", type=checks.int_flag(1), default=128,
                      help="encoder input tokens per example, prompt excluded (default: 128)")
  parser.add_argument("--prompt_length", type=checks.int_flag(1), default=100,
                      help="soft-prompt tokens prepended to the inputs (default: 100)")
  parser.add_argument("--targets_length", type=checks.int_flag(1), default=8,
                      help="decoder target tokens per example (default: 8)")
  parser.add_argument("--steps", type=checks.int_flag(1), default=10,
                      help="timed steps, after one untimed warm-up step (default: 10)")
  parser.add_argument("--frozen_dtype", default=None,
                      help="store the frozen backbone in this dtype, e.g. bfloat16 (default: "
                      "float32)")
  parser.add_argument("--dtype", default="float32",
                      help="activation dtype: float32 or bfloat16 (default: float32)")
  parser.add_argument("--remat", nargs="?", const="full", default="none",
                      help="rematerialize each layer's activations in the backward pass with "
                      "this policy: none, full (the default of a bare --remat), dots, "
                      "dots_saveable (T5Config.remat)")
  parser.add_argument("--dropout_rate", type=checks.float_flag(at_least=0.0, below=1.0),
                      default=0.0, help="dropout in the backbone (the run files' DROPOUT_RATE, "
                      "0.1 in runs/prompt_finetune.gin; default: 0.0)")
  parser.add_argument("--seed", type=checks.SEED_FLAG, default=0,
                      help="seed of the random backbone, prompt and batch (default: 0)")


def peak_rss_mb() -> float:
  """Peak resident memory of this process (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> Optional[float]:
  """Resident memory now (Linux `/proc/self/statm`; None elsewhere)."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20
  except OSError:
    return None


def _memory_mb(compiled) -> Dict[str, Optional[float]]:
  """XLA's buffer sizes of the compiled step (`memory_analysis`), in MiB."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # some backends have none
    m = None
  fields = ("argument", "output", "alias", "temp", "generated_code")
  return {f"xla_{f}_mb": (getattr(m, f"{f}_size_in_bytes") / 2 ** 20 if m is not None else None)
          for f in fields}


def device_peak_mb() -> Optional[float]:
  """Peak bytes the accelerator's allocator held (GPU/TPU `memory_stats`); None on CPU."""
  stats = jax.local_devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  return stats["peak_bytes_in_use"] / 2 ** 20 if stats and "peak_bytes_in_use" in stats else None


def _tree_mb(tree) -> float:
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)) / 2 ** 20


def _flops(compiled) -> Optional[float]:
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # some backends have none
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  value = (analysis or {}).get("flops")
  return float(value) if value else None


def random_batch(rng: np.random.Generator, batch: int, inputs: int, targets: int,
                 vocab: int) -> Dict[str, np.ndarray]:
  """A full-length (no padding) batch of model features."""
  enc = rng.integers(3, vocab, size=(batch, inputs), dtype=np.int32)
  tgt = rng.integers(3, vocab, size=(batch, targets), dtype=np.int32)
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt, "decoder_loss_weights": np.ones_like(tgt, np.float32)}


def bench_train_step(size: str = "small", batch_size: int = 8, inputs_length: int = 128,
                     prompt_length: int = 100, targets_length: int = 8, steps: int = 10,
                     frozen_dtype: Optional[str] = None, dtype: str = "float32",
                     remat: Any = "none", seed: int = 0,
                     dropout_rate: float = 0.0) -> Dict[str, Any]:
  """Compiles and times the trainer's own jitted train step; returns the measurements.

  Also where the memory goes: resident memory after the imports (JAX and the
  trainer's modules; TensorFlow and SeqIO are not imported here, see
  `tensorflow_imported`) and after the setup (backbone built), the parameters'
  bytes, and XLA's buffer sizes of the compiled step (`xla_temp_mb`:
  activations and scratch).
  """
  rss_start = rss_mb()
  from prompt_tuning.models.config import t5_1_1_config
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts import initializers
  from prompt_tuning.prompts.prompt import Prompt
  from prompt_tuning.train import optim
  from prompt_tuning.train.run_setup import build_run, compile_train_step

  from prompt_tuning.models import memory_bound
  rss_imports = rss_mb()
  config = t5_1_1_config(size, dtype=dtype, remat=remat, dropout_rate=dropout_rate)
  memory_bound.check_fits(config, memory_bound.Pass(batch_size, inputs_length + prompt_length,
                                                    targets_length), "the timed step",
                          "lower --batch_size, --inputs_length, --prompt_length or "
                          "--targets_length")
  model = T5(config, prompt=Prompt(length=prompt_length, initializer=initializers.uniform()))
  # The same setup and the same jitted, sharded, donating step as `trainer.train`.
  ctx = build_run(model=model, seed=seed, frozen_dtype=frozen_dtype)
  split = ctx.split(("prompt/.*",))
  ctx.variables = None
  train_step = compile_train_step(ctx, split, optim.adafactor())
  partitioner, frozen = ctx.partitioner, split.frozen
  trainable, opt_state, step_fn = split.trainable, train_step.opt_state, train_step.step
  batch = random_batch(np.random.default_rng(seed), batch_size, inputs_length, targets_length,
                       config.vocab_size)
  # What `data.with_example_index` adds at step 0 (not imported: it brings TensorFlow).
  batch = partitioner.shard_batch({**batch, "example_index": np.arange(batch_size, dtype=np.int32)})
  rng = jax.random.PRNGKey(seed + 1)
  rss_setup, params_mb = rss_mb(), _tree_mb(frozen) + _tree_mb(trainable)
  with partitioner.context():
    start = time.perf_counter()
    lowered = step_fn.lower(trainable, opt_state, frozen, batch, rng)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    flops, memory = _flops(compiled), _memory_mb(compiled)
    host_memory.release_free_memory()  # as the trainer does after its first step
    rss_compiled = rss_mb()
    trainable, opt_state, metrics = compiled(trainable, opt_state, frozen, batch, rng)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for i in range(steps):
      start = time.perf_counter()
      trainable, opt_state, metrics = compiled(trainable, opt_state, frozen, batch,
                                               jax.random.fold_in(rng, i))
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {
      "framework": "prompt_tuning (jax)", "size": size, "batch_size": batch_size,
      "inputs_length": inputs_length, "prompt_length": prompt_length,
      "targets_length": targets_length, "dtype": dtype, "frozen_dtype": frozen_dtype or "float32",
      "remat": remat, "dropout_rate": dropout_rate, "steps": steps, "median_step_s": median,
      "min_step_s": min(times),
      "compile_s": compile_s, "peak_rss_mb": peak_rss_mb(), "device_peak_mb": device_peak_mb(),
      "rss_at_start_mb": rss_start,
      "rss_after_imports_mb": rss_imports, "rss_after_setup_mb": rss_setup,
      "rss_after_compile_mb": rss_compiled,
      "params_mb": params_mb, **memory, "tensorflow_imported": "tensorflow" in sys.modules,
      "flops_per_step": flops,
      "flops_per_s": flops / median if flops else None,
      "loss": float(jax.device_get(metrics["loss"])),
      "jax_devices": jax.device_count(), "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind, "jax_version": jax.__version__,
  }


def run(args) -> int:
  result = bench_train_step(args.size, args.batch_size, args.inputs_length, args.prompt_length,
                            args.targets_length, args.steps, args.frozen_dtype, args.dtype,
                            args.remat, args.seed, args.dropout_rate)
  print(json.dumps(result), flush=True)
  return 0
