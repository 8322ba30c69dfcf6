"""`prompt-tuning export --prompt P.npy --checkpoint BACKBONE --output DIR`: a PEFT adapter.

Writes the prompt as a Hugging Face PEFT prompt-tuning adapter; with
`--hf_output`, also the backbone as a Hugging Face T5 folder to load it on.
"""
import os

from prompt_tuning.errors import UserError


def add_arguments(parser) -> None:
  parser.add_argument("--prompt", required=True,
                      help="an exported prompt, e.g. MODEL_DIR/prompts/step_N.npy")
  parser.add_argument("--checkpoint", required=True, help="the backbone folder it was tuned on")
  parser.add_argument("--output", required=True, help="new folder for the PEFT adapter")
  parser.add_argument("--hf_output", default=None,
                      help="also write the backbone as a Hugging Face T5 folder here")


def run(args) -> int:
  from prompt_tuning.io import backbone, hf, peft
  from prompt_tuning.prompts.files import read_prompt
  prompt = read_prompt(args.prompt, "--prompt")
  config = backbone.load_backbone_config(args.checkpoint)
  hf_output = os.path.abspath(args.hf_output) if args.hf_output else None
  if os.path.exists(os.path.join(args.output, peft.CONFIG)):
    raise UserError(f"{args.output} already holds a PEFT adapter; choose a new --output folder")
  if hf_output:  # written first; the adapter names it by its absolute path
    _, params = backbone.load_backbone(args.checkpoint)
    hf.save_hf(hf_output, config, params)
  peft.save_peft_prompt(args.output, prompt, config, base_model_name_or_path=hf_output)
  print(f"wrote PEFT adapter {os.path.abspath(args.output)} ({prompt.shape[0]} virtual tokens)"
        + (f" on Hugging Face backbone {hf_output}" if hf_output else
           "; without --hf_output it names no base model (set base_model_name_or_path in "
           "adapter_config.json, or rerun with --hf_output DIR)"))
  return 0
