"""`prompt-tuning export --prompt P.npy --checkpoint BACKBONE --output DIR`: a PEFT adapter.

Writes the prompt as a Hugging Face PEFT prompt-tuning adapter; with
`--hf_output`, also the backbone as a Hugging Face T5 folder to load it on.
"""
import os

import numpy as np

from prompt_tuning import checks
from prompt_tuning.errors import UserError


def add_arguments(parser) -> None:
  parser.add_argument("--prompt", required=True, help="an exported prompt, e.g. MODEL_DIR/prompts/step_N.npy")
  parser.add_argument("--checkpoint", required=True, help="the backbone folder it was tuned on")
  parser.add_argument("--output", required=True, help="new folder for the PEFT adapter")
  parser.add_argument("--hf_output", default=None,
                      help="also write the backbone as a Hugging Face T5 folder here")


def run(args) -> int:
  from prompt_tuning.io import backbone, hf, npy, peft
  # Everything is checked before the first file is written.
  checks.output_dir(args.output, "--output")
  if os.path.exists(os.path.join(args.output, peft.CONFIG)):
    raise UserError(f"--output {args.output} already holds a PEFT adapter; choose a new folder")
  if args.hf_output:
    checks.output_dir(args.hf_output, "--hf_output")
    if os.path.exists(os.path.join(args.hf_output, hf.CONFIG_FILE)):
      raise UserError(f"--hf_output {args.hf_output} already holds a model; choose a new folder")
  prompt = npy.load_array(args.prompt, "prompt file",
                          "pass a prompt exported by training, e.g. MODEL_DIR/prompts/step_N.npy")
  if not np.all(np.isfinite(prompt)):
    raise UserError(f"prompt file {args.prompt} holds NaN or infinite values (a diverged run?); "
                    "export a prompt from a step before the divergence")
  config = backbone.load_backbone_config(args.checkpoint)
  if prompt.ndim != 2 or prompt.shape[1] != config.emb_dim:
    raise UserError(f"prompt file {args.prompt} has shape {prompt.shape}, but backbone "
                    f"{args.checkpoint} needs [length, {config.emb_dim}]; export a prompt tuned "
                    "on this backbone")
  params = backbone.load_backbone(args.checkpoint)[1] if args.hf_output else None
  peft.save_peft_prompt(args.output, prompt, config, base_model_name_or_path=args.hf_output)
  if args.hf_output:
    hf.save_hf(args.hf_output, config, params)
  print(f"wrote PEFT adapter {os.path.abspath(args.output)} ({prompt.shape[0]} virtual tokens)"
        + (f" and Hugging Face backbone {args.hf_output}" if args.hf_output else ""))
  return 0
