"""`prompt-tuning convert`: a T5X or Hugging Face checkpoint -> a backbone folder.

  prompt-tuning convert --from t5x --input gs://.../checkpoint_1100000 --output /ckpt/base
  prompt-tuning convert --from hf --input ./t5-base-lm-adapt --output /ckpt/base

Everything is read and checked against the model (every parameter path and
shape) before anything is written; the output is assembled in a temporary
sibling folder and renamed into place, so a failed conversion leaves no
half-written `--output` behind.
"""
import argparse
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from prompt_tuning import checks, fs
from prompt_tuning.errors import UserError, closest
from prompt_tuning.io.backbone import check_tree_shapes, save_backbone
from prompt_tuning.models.config import T5Config
from prompt_tuning.train.initialize import backbone_shapes

FORMATS = ("t5x", "hf")
DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  # `--from` is validated in `run` (not argparse `choices`) so a bad value is
  # reported as one `error:` line like every other failure.
  parser.add_argument("--from", dest="source_format", required=True, metavar="{t5x,hf}",
                      help="checkpoint format of --input")
  parser.add_argument("--input", required=True,
                      help="T5X checkpoint_N folder (local or gs://) or Hugging Face model folder")
  parser.add_argument("--output", required=True, help="new backbone folder to write")
  parser.add_argument("--dtype", default=None, metavar="{float32,bfloat16,float16}",
                      help="parameter dtype to store (default: as in the checkpoint)")
  parser.add_argument("--relative_attention_max_distance", type=checks.int_flag(1), default=None,
                      help="T5X: not stored in the weights (default 128, T5 1.1's value); "
                           "HF: overrides config.json")


def read_checkpoint(source_format: str, path: str, dtype: Optional[str] = None,
                    max_distance: Optional[int] = None) -> Tuple[T5Config, Dict[str, Any]]:
  """(config, numpy params) of a checkpoint, checked against the model it describes."""
  if source_format == "t5x":
    from prompt_tuning.io.t5x import DEFAULT_MAX_DISTANCE, load_t5x
    config, params = load_t5x(path, max_distance or DEFAULT_MAX_DISTANCE, dtype)
  elif source_format == "hf":
    from prompt_tuning.io.hf import load_hf
    config, params = load_hf(path, dtype, max_distance)
  else:
    raise UserError(f"unknown --from {source_format!r}.{closest(source_format, FORMATS)} "
                    f"Choose one of {', '.join(FORMATS)}")
  check_tree_shapes(params, backbone_shapes(config), what=f"{source_format} checkpoint {path}")
  return config, params


def _check_args(args: argparse.Namespace) -> None:
  if args.source_format not in FORMATS:
    raise UserError(f"unknown --from {args.source_format!r}.{closest(args.source_format, FORMATS)} "
                    f"Choose one of {', '.join(FORMATS)}")
  if args.dtype is not None and args.dtype not in DTYPES:
    raise UserError(f"unknown --dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
  # Without network a gs:// checkpoint would be retried for minutes: say so in seconds.
  fs.check_reachable(args.input, f"copy the checkpoint folder to this machine (gsutil -m cp -r "
                     f"{args.input} /local/dir) and pass --input with the local folder")
  fs.check_reachable(args.output, "pass a local --output folder")
  if not fs.is_remote(args.output) and os.path.exists(args.output) and (
      not os.path.isdir(args.output) or os.listdir(args.output)):
    raise UserError(f"--output {args.output} already exists; choose a new folder or delete it")


def _write(output: str, config: T5Config, params: Dict[str, Any], source: Dict[str, Any]) -> None:
  # Remote: config.json, written last, marks completion.
  with fs.staged_folder(output, "converting") as staging:
    save_backbone(staging, config, params, source)


def run(args: argparse.Namespace) -> int:
  _check_args(args)
  config, params = read_checkpoint(args.source_format, args.input, args.dtype,
                                   args.relative_attention_max_distance)
  # The step TRAIN_STEPS counts from when the folder is INITIAL_CHECKPOINT_PATH (as in T5X).
  step = 0
  if args.source_format == "t5x":
    from prompt_tuning.io.t5x import read_t5x_step
    step = read_t5x_step(args.input)
  source = {"format": args.source_format,
            "path": fs.absolute(args.input), "step": step}
  _write(args.output, config, params, source)
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  print(f"wrote {args.output}: T5 1.1 emb_dim={config.emb_dim} heads={config.num_heads} "
        f"layers={config.num_encoder_layers}+{config.num_decoder_layers} "
        f"vocab={config.vocab_size}, {count:,} parameters ({config.param_dtype}) from "
        f"{args.source_format} {args.input} (step {step:,})")
  if args.source_format == "t5x" and args.relative_attention_max_distance is None:
    print(f"note: relative_attention_max_distance={config.relative_attention_max_distance} "
          "(T5 1.1's value; T5X checkpoints do not store it, so pass "
          "--relative_attention_max_distance if the model was trained with another)")
  return 0
