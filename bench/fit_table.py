"""T5 1.1 sizes x TPU/GPU slices: the first setting that fits, by `plan`, checked by XLA.

For each row, settings are tried in order (cheapest change first) with `plan`'s
estimate: microbatches 1, 2, 4, ... at float32 frozen weights, then with
bfloat16 frozen weights, then with remat 'full'; the model-parallel size is the
TPU script's default for the size, raised until the data shards divide the
batch. With `--compile`, the chosen setting is then compiled
(`prompt-tuning plan --compile` on as many fake CPU devices) and XLA's memory
printed beside it. One JSON object per line:

    python bench/fit_table.py --sizes small,base --slices v3-8,v4-8 [--compile]

The run is the TPU script's (`scripts/tpu/train_rte.sh`): RTE, batch 32,
inputs 512 + prompt 100, targets 8 (its class labels' length is what plan
uses: `TASK_FEATURE_LENGTHS` of runs/prompt_finetune.gin), dropout 0.1,
activations bfloat16 (the model gins' ACTIVATION_DTYPE).
"""
import argparse
import json
import os
import subprocess
import sys

# Slice -> (JAX devices, GiB of memory per device); as scripts/tpu/train_rte.sh counts them.
SLICES = {"v3-8": (8, 16), "v3-32": (32, 16), "v3-64": (64, 16), "v4-8": (4, 32),
          "v4-32": (16, 32), "v4-64": (32, 32), "v5e-16": (16, 16), "v5e-64": (64, 16),
          "8xH100": (8, 80)}
SIZES = ("small", "base", "large", "xl", "xxl")
DEFAULT_MODEL_PARALLEL = {"small": 1, "base": 1, "large": 1, "xl": 4, "xxl": 8}
BATCH = 32


def gin_flags(size: str, model_parallel: int, microbatches: int, frozen_dtype: str,
              remat: str, activation_dtype: str = "bfloat16") -> list:
  return [f"--gin_file=models/t5_1_1_{size}_prompt.gin", "--gin_file=runs/prompt_finetune.gin",
          "--gin.MODEL_DIR='/unused'", "--gin.MIXTURE_OR_TASK_NAME='super_glue_rte'",
          "--gin.INITIAL_CHECKPOINT_PATH=None", f"--gin.BATCH_SIZE={BATCH}",
          f"--gin.NUM_MICROBATCHES={microbatches}",
          f"--gin.make_mesh.model_parallel_size={model_parallel}",
          f"--gin.ACTIVATION_DTYPE='{activation_dtype}'",
          f"--gin.train.frozen_dtype='{frozen_dtype}'", f"--gin.T5Config.remat='{remat}'"]


def settings(size: str, devices: int):
  """Candidate settings, cheapest change first."""
  model_parallel = min(DEFAULT_MODEL_PARALLEL[size], devices)
  while devices // model_parallel > BATCH:
    model_parallel *= 2
  data = devices // model_parallel
  counts = [m for m in (1, 2, 4, 8, 16, 32) if (BATCH // data) % m == 0]
  for frozen, remat in (("float32", "none"), ("bfloat16", "none"), ("bfloat16", "full")):
    for m in counts:
      yield dict(model_parallel=model_parallel, microbatches=m, frozen_dtype=frozen, remat=remat)


def estimate(size: str, devices: int, s: dict) -> dict:
  from prompt_tuning import configurables
  from prompt_tuning.cli import split_gin_flags
  from prompt_tuning.commands.plan import plan_run
  flags = gin_flags(size, **s)
  files = [f.split("=", 1)[1] for f in flags if f.startswith("--gin_file=")]
  _, bindings = split_gin_flags([f for f in flags if not f.startswith("--gin_file=")])
  configurables.parse(files, bindings)
  return plan_run(devices)


def compiled(size: str, devices: int, s: dict, activation_dtype: str = "bfloat16") -> dict:
  """`prompt-tuning plan --compile --json` of the setting, on fake CPU devices."""
  argv = [sys.executable, "-m", "prompt_tuning", "plan",
          *gin_flags(size, **s, activation_dtype=activation_dtype),
          f"--num_devices={devices}", "--compile", "--json"]
  proc = subprocess.run(argv, capture_output=True, text=True, check=False)
  if proc.returncode:
    return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default=",".join(SIZES))
  parser.add_argument("--slices", default=",".join(SLICES))
  parser.add_argument("--compile", action="store_true")
  args = parser.parse_args(argv)
  for size in args.sizes.split(","):
    for name in args.slices.split(","):
      devices, gib = SLICES[name]
      row = {"size": size, "slice": name, "devices": devices, "device_gib": gib}
      for s in settings(size, devices):
        plan = estimate(size, devices, s)
        if plan["device_bytes"] <= gib * 2 ** 30:
          row.update(s, estimate_gib=round(plan["device_bytes"] / 2 ** 30, 2))
          break
      else:
        row["fits"] = False
      if args.compile and "microbatches" in row:
        result = compiled(size, devices, {k: row[k] for k in
                                          ("model_parallel", "microbatches", "frozen_dtype",
                                           "remat")})
        if "error" in result:
          row["xla_error"] = result["error"]
        else:
          row["xla_gib"] = round(result["compiled"]["device_bytes"] / 2 ** 30, 2)
      print(json.dumps(row), flush=True)
  return 0


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.exit(main())
