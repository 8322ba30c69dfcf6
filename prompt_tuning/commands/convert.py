"""`prompt-tuning convert`: a T5X or Hugging Face checkpoint -> a backbone folder, and back.

  prompt-tuning convert --from t5x --input gs://.../checkpoint_1100000 --output /ckpt/base
  prompt-tuning convert --from hf --input ./t5-base-lm-adapt --output /ckpt/base
  prompt-tuning convert --to hf --input /ckpt/base --output ./t5-base-hf

`--to hf` writes a Hugging Face T5 1.1 folder (`config.json` +
`model.safetensors`, `T5ForConditionalGeneration` names, untied `lm_head` as
T5 1.1 has) from a backbone folder or a T5X checkpoint (`--from` is then read
from the folder's files, or given as `backbone` / `t5x`).

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
from prompt_tuning.io.backbone import save_backbone
from prompt_tuning.models.config import T5Config

FORMATS = ("t5x", "hf")
TARGETS = ("backbone", "hf")
# What each target is made from (`--to hf` from a Hugging Face folder would be a copy).
SOURCES = {"backbone": FORMATS, "hf": ("backbone", "t5x")}
DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  # `--from`/`--to` are validated in `run` (not argparse `choices`) so a bad value is
  # reported as one `error:` line like every other failure.
  parser.add_argument("--from", dest="source_format", default=None,
                      metavar="{t5x,hf,backbone}",
                      help="checkpoint format of --input (required for --to backbone; "
                      "with --to hf read from the folder's files when left out)")
  parser.add_argument("--to", dest="target_format", default="backbone", metavar="{backbone,hf}",
                      help="what to write: a backbone folder (default) or a Hugging Face T5 folder")
  parser.add_argument("--input", required=True,
                      help="T5X checkpoint_N folder (local or gs://), Hugging Face model folder, "
                      "or (--to hf) a backbone folder")
  parser.add_argument("--output", required=True, help="new folder to write")
  parser.add_argument("--dtype", default=None, metavar="{float32,bfloat16,float16}",
                      help="parameter dtype to store (default: as in the checkpoint)")
  parser.add_argument("--relative_attention_max_distance", type=checks.int_flag(1), default=None,
                      help="T5X: not stored in the weights (default 128, T5 1.1's value); "
                           "HF: overrides config.json")


def read_checkpoint(source_format: str, path: str, dtype: Optional[str] = None,
                    max_distance: Optional[int] = None) -> Tuple[T5Config, Dict[str, Any]]:
  """(config, numpy params) of a checkpoint, checked against the model it describes."""
  if source_format not in FORMATS:
    raise UserError(f"unknown --from {source_format!r}.{closest(source_format, FORMATS)} "
                    f"Choose one of {', '.join(FORMATS)}")
  from prompt_tuning.io.sources import read_checkpoint as read_foreign
  return read_foreign(source_format, path, dtype, max_distance)


def _check_args(args: argparse.Namespace) -> None:
  if args.target_format not in TARGETS:
    raise UserError(f"unknown --to {args.target_format!r}.{closest(args.target_format, TARGETS)} "
                    f"Choose one of {', '.join(TARGETS)}")
  sources = SOURCES[args.target_format]
  if args.source_format is None and args.target_format == "backbone":
    raise UserError(f"convert needs --from {{{','.join(FORMATS)}}}: the format of --input")
  if args.source_format is not None and args.source_format not in sources:
    hint = closest(args.source_format, sources)
    if args.source_format in ("hf", "backbone"):
      hint = (" --input is a Hugging Face folder already" if args.source_format == "hf" else
              " --input is a backbone folder already (convert --to hf writes a Hugging Face one)")
    raise UserError(f"unknown --from {args.source_format!r} for --to {args.target_format}.{hint} "
                    f"Choose one of {', '.join(sources)}")
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


def _to_hf(args: argparse.Namespace) -> int:
  """`--to hf`: a backbone folder or T5X checkpoint -> a Hugging Face T5 folder."""
  from prompt_tuning.io import hf, sources
  kind = args.source_format or sources.identify(args.input, "--input")
  if kind not in SOURCES["hf"]:
    raise UserError(f"--input {args.input} is a Hugging Face folder already; --to hf takes a "
                    "backbone folder or a T5X checkpoint_N folder")
  if fs.is_remote(args.output):
    raise UserError(f"--to hf writes local folders only, not {args.output}; write locally and "
                    "copy it (gsutil -m cp -r)")
  if kind == "backbone":
    config, params = sources.read_backbone(args.input, "--input",
                                           args.relative_attention_max_distance)
  else:
    config, params = read_checkpoint(kind, args.input, None, args.relative_attention_max_distance)
  params = jax.tree_util.tree_map(np.asarray, params)
  if args.dtype is not None:
    params = jax.tree_util.tree_map(lambda x: x.astype(np.dtype(args.dtype)), params)
    config = config.replace(param_dtype=args.dtype)
  with fs.staged_folder(args.output, "converting") as staging:
    hf.save_hf(staging, config, params)
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  print(f"wrote Hugging Face T5 folder {args.output}: T5ForConditionalGeneration "
        f"d_model={config.emb_dim} heads={config.num_heads} layers={config.num_encoder_layers}+"
        f"{config.num_decoder_layers} vocab={config.vocab_size}, {count:,} parameters "
        f"({np.dtype(jax.tree_util.tree_leaves(params)[0].dtype).name}) from {kind} {args.input}")
  _note_assumed_distance(kind, args, config)
  return 0


def run(args: argparse.Namespace) -> int:
  _check_args(args)
  if args.target_format == "hf":
    return _to_hf(args)
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
  _note_assumed_distance(args.source_format, args, config)
  return 0


def _note_assumed_distance(kind: str, args: argparse.Namespace, config) -> None:
  if kind == "t5x" and args.relative_attention_max_distance is None:
    print(f"note: relative_attention_max_distance={config.relative_attention_max_distance} "
          "(T5 1.1's value; T5X checkpoints do not store it, so pass "
          "--relative_attention_max_distance if the model was trained with another)")
