"""`prompt-tuning export --prompt P.npy --checkpoint BACKBONE --output DIR`: a PEFT adapter.

Writes the prompt as a Hugging Face PEFT prompt-tuning adapter; with
`--hf_output`, also the backbone as a Hugging Face T5 folder to load it on.
"""
import os

import numpy as np

from prompt_tuning.errors import UserError


def add_arguments(parser) -> None:
  parser.add_argument("--prompt", required=True, help="an exported prompt, e.g. MODEL_DIR/prompts/step_N.npy")
  parser.add_argument("--checkpoint", required=True, help="the backbone folder it was tuned on")
  parser.add_argument("--output", required=True, help="new folder for the PEFT adapter")
  parser.add_argument("--hf_output", default=None,
                      help="also write the backbone as a Hugging Face T5 folder here")


def run(args) -> int:
  from prompt_tuning.io import backbone, hf, peft
  try:
    prompt = np.load(args.prompt, allow_pickle=False)
  except FileNotFoundError:
    raise UserError(f"prompt file {args.prompt} does not exist; see MODEL_DIR/prompts/") from None
  config = backbone.load_backbone_config(args.checkpoint)
  peft.save_peft_prompt(args.output, prompt, config, base_model_name_or_path=args.hf_output)
  if args.hf_output:
    _, params = backbone.load_backbone(args.checkpoint)
    hf.save_hf(args.hf_output, config, params)
  print(f"wrote PEFT adapter {os.path.abspath(args.output)} ({prompt.shape[0]} virtual tokens)"
        + (f" and Hugging Face backbone {args.hf_output}" if args.hf_output else ""))
  return 0
