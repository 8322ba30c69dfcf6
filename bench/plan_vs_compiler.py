"""`plan`'s estimate against XLA's compiled memory of the real train step, per configuration.

Prints one JSON object per line: the configuration, the estimate's parts, XLA's
parts (`train.step_memory`) and their ratio. Runs on fake CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python bench/plan_vs_compiler.py [--grid tiny|sizes] [--devices 8]

`tiny` changes one setting at a time (mesh, dtype, remat, microbatches, frozen
dtype); `test` is the part tests/test_plan_compile.py asserts. Dropout is off
unless `--dropout` (its masks are what the estimate cannot know: see
docs/performance.md, "Memory of the train step").
"""
import argparse
import itertools
import json
import sys

# The tests' tiny model, wide enough that the activations dominate XLA's scratch.
TINY = dict(vocab_size=256, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
            num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8)
FILES = ("runs/prompt_finetune.gin", "prompts/prompt.gin")


def bindings(model: dict, *, devices: int, model_parallel: int, batch: int, inputs: int,
             targets: int, dtype: str, remat, microbatches: int, frozen_dtype=None,
             prompt_length: int = 8, dropout: float = 0.0) -> list:
  out = ["build_model.model_config = @T5Config()",
         *[f"T5Config.{k} = {v!r}" for k, v in model.items()],
         f"T5Config.dtype = {dtype!r}", f"T5Config.remat = {remat!r}",
         "MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_NAME = 'unused'",
         "INITIAL_CHECKPOINT_PATH = None", f"PROMPT_LENGTH = {prompt_length}",
         f"BATCH_SIZE = {batch}", f"DROPOUT_RATE = {dropout}",
         f"TASK_FEATURE_LENGTHS = {{'inputs': {inputs}, 'targets': {targets}}}",
         f"train.num_microbatches = {microbatches}",
         f"make_mesh.model_parallel_size = {model_parallel}",
         "make_mesh.devices = @first_devices()", f"first_devices.count = {devices}"]
  if frozen_dtype:
    out.append(f"train.frozen_dtype = {frozen_dtype!r}")
  return out


def measure(binds: list) -> dict:
  """Estimate and XLA's memory of one configuration (gin parsed here)."""
  from prompt_tuning import configurables
  from prompt_tuning.commands import plan
  configurables.parse(FILES, binds)
  devices = int(next(b for b in binds if b.startswith("first_devices.count")).split("=")[1])
  estimate = plan.plan_run(devices)
  compiled = plan.compiled_step_memory(estimate["activations"]["num_microbatches"])
  return {"estimate": estimate["device_bytes"],
          "estimate_activations": estimate["activations"]["device_bytes"],
          "estimate_weights": estimate["frozen"]["device_bytes"],
          "xla": compiled.device_bytes, "xla_temp": compiled.temp_bytes,
          "xla_arguments": compiled.argument_bytes,
          "ratio": round(estimate["device_bytes"] / compiled.device_bytes, 3)}


# The test's grid: where XLA:CPU is representative (float32 activations, no remat).
TEST_GRID = ("base", "devices=4+model_parallel=2", "devices=8+model_parallel=1", "microbatches=2")


def tiny_grid():
  """(name, settings): one change at a time from a base point."""
  base = dict(devices=1, model_parallel=1, batch=8, inputs=64, targets=8, dtype="float32",
              remat="none", microbatches=1)
  changes = [{}, {"devices": 4, "model_parallel": 2}, {"devices": 8, "model_parallel": 1},
             {"dtype": "bfloat16"}, {"remat": "full"}, {"remat": "dots"}, {"microbatches": 2},
             {"frozen_dtype": "bfloat16", "dtype": "bfloat16"}]
  for change in changes:
    yield "+".join(f"{k}={v}" for k, v in change.items()) or "base", {**base, **change}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--grid", choices=("tiny", "test"), default="tiny",
                      help="tiny: every row; test: tests/test_plan_compile.py's rows")
  parser.add_argument("--dropout", type=float, default=0.0)
  args = parser.parse_args(argv)
  for name, settings in tiny_grid():
    if args.grid == "test" and name not in TEST_GRID:
      continue
    settings = {**settings, "dropout": args.dropout}
    row = measure(bindings(TINY, **settings))
    print(json.dumps({"name": name, **settings, **row}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
