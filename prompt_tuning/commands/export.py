"""`prompt-tuning export (--prompt P.npy | --deltas MODEL_DIR/exports/step_N) --checkpoint BACKBONE
--output DIR`: a Hugging Face PEFT adapter.

`--prompt` writes a tuned prompt as a PEFT prompt-tuning adapter; `--deltas`
writes a run's export (`prompt_tuning.train.exports`) of a LoRA run as a PEFT
LoRA adapter (or of a plain prompt run as a prompt-tuning adapter). With
`--hf_output`, also the backbone as a Hugging Face T5 folder to load it on.
`--checkpoint` is a backbone folder, a T5X checkpoint_N folder or a Hugging Face folder.

`--num_transformer_submodules 2` writes PEFT's default seq2seq layout (what
`PromptTuningConfig(task_type=SEQ_2_SEQ_LM)` builds and loads): the prompt, then
as many rows that PEFT never applies (`io.peft`): those of a `--prompt` adapter
that had them, else zeros. The default keeps the layout of `--prompt`: 2 for
such an adapter, 1 (encoder only) otherwise.
"""
import os
import sys
from typing import Dict, Tuple

import numpy as np

from prompt_tuning import checks, fs
from prompt_tuning.commands import checkpoint_flags
from prompt_tuning.errors import UserError
from prompt_tuning.models.config import architecture_of


def add_arguments(parser) -> None:
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--prompt", help="an exported prompt, e.g. MODEL_DIR/prompts/step_N.npy")
  source.add_argument("--deltas", help="a run's export folder, e.g. MODEL_DIR/exports/step_N "
                      "(LoRA or a plain prompt)")
  checkpoint_flags.add_checkpoint_arguments(parser, "the backbone it was tuned on")
  parser.add_argument("--num_transformer_submodules", type=checks.int_flag(1, 2), default=None,
                      metavar="{1,2}", help="PEFT layout of a prompt adapter: 1 (encoder only) "
                      "or 2 (PEFT's seq2seq default; its second half is not applied by PEFT); "
                      "default: that of --prompt")
  parser.add_argument("--output", required=True, help="new folder for the PEFT adapter")
  parser.add_argument("--hf_output", default=None,
                      help="also write the backbone as a Hugging Face T5 folder here")


def _check_prompt(prompt: np.ndarray, source: str, config, checkpoint: str) -> None:
  from prompt_tuning.prompts.files import check_prompt
  check_prompt(prompt, f"prompt {source}")
  if prompt.shape[1] != config.emb_dim:
    raise UserError(f"prompt file {source} has shape {prompt.shape}, but backbone "
                    f"{checkpoint} needs [length, {config.emb_dim}]; export a prompt tuned "
                    "on this backbone")


def lora_pairs(tensors: Dict[str, np.ndarray], description: Dict, source: str
               ) -> Tuple[Dict[str, Tuple[np.ndarray, np.ndarray]], int, float]:
  """(module path -> (a, b), rank, alpha) of an export that holds LoRA pairs only."""
  plan = description.get("plan", [])
  insertions = [rule["insertion"] for rule in plan]
  if (not insertions or any(i["op"] != "lora" for i in insertions)
      or any(not k.startswith("params/") for k in tensors)):
    raise UserError(f"{source} holds {', '.join(description.get('methods', [])) or 'nothing'}; "
                    "PEFT export takes LoRA runs (or plain prompts: --prompt prompts/step_N.npy)")
  settings = {(i["rank"], float(i["alpha"]), i["name"]) for i in insertions}
  if len(settings) != 1:
    raise UserError(f"{source} mixes LoRA settings {sorted(settings)}; a PEFT LoRA config holds "
                    "one rank and alpha")
  rank, alpha, name = settings.pop()
  pairs, suffix = {}, {"a": 0, "b": 1}
  for key, value in tensors.items():
    module, _, leaf = key[len("params/"):].rpartition(f"/{name}/")
    if leaf not in suffix or not module:
      raise UserError(f"{source} holds {key}, which is not a LoRA pair; PEFT export takes LoRA "
                      "runs only")
    pairs.setdefault(module, [None, None])[suffix[leaf]] = value
  missing = sorted(m for m, ab in pairs.items() if ab[0] is None or ab[1] is None)
  if missing:
    raise UserError(f"{source} lacks half of the LoRA pair at {missing[0]}; re-export the run")
  return {m: (ab[0], ab[1]) for m, ab in pairs.items()}, int(rank), alpha


def _check_new_folder(path: str, flag: str) -> None:
  """The folder is written whole, then renamed into place: it must not hold files already."""
  if os.path.isdir(path) and os.listdir(path):
    raise UserError(f"{flag} {path} already holds files; choose a new (or empty) folder")


def run(args) -> int:
  import jax
  from prompt_tuning.io import hf, peft, sources
  from prompt_tuning.prompts.files import read_prompts
  # Everything is checked before the first file is written.
  checks.output_dir(args.output, "--output")
  if os.path.exists(os.path.join(args.output, peft.CONFIG)):
    raise UserError(f"--output {args.output} already holds a PEFT adapter; choose a new folder")
  _check_new_folder(args.output, "--output")
  hf_output = os.path.abspath(args.hf_output) if args.hf_output else None
  if hf_output:
    checks.output_dir(hf_output, "--hf_output")
    if os.path.exists(os.path.join(hf_output, hf.CONFIG_FILE)):
      raise UserError(f"--hf_output {args.hf_output} already holds a model; choose a new folder")
    _check_new_folder(hf_output, "--hf_output")
  if args.deltas and args.num_transformer_submodules is not None:
    raise UserError("--num_transformer_submodules is for prompt adapters; pass it with --prompt")
  config = sources.read_config(args.checkpoint, "--checkpoint",
                               args.relative_attention_max_distance)
  note = sources.max_distance_note(args.checkpoint, "--checkpoint",
                                   args.relative_attention_max_distance)
  if note and hf_output:
    print(note, file=sys.stderr, flush=True)
  if args.prompt:
    prompt, decoder_half = read_prompts(args.prompt, "--prompt")
    _check_prompt(prompt, args.prompt, config, args.checkpoint)
    submodules = args.num_transformer_submodules or (1 if decoder_half is None else 2)
    if submodules == 1:
      decoder_half = None
    elif decoder_half is None:
      decoder_half = np.zeros_like(prompt)  # PEFT never applies these rows
    write = lambda out: peft.save_peft_prompt(out, prompt, config,
                                              base_model_name_or_path=hf_output,
                                              decoder_half=decoder_half)
    what = f"{prompt.shape[0]} virtual tokens, num_transformer_submodules={submodules}"
  else:
    from prompt_tuning.train import exports
    tensors, description = exports.read_export(args.deltas)
    if architecture_of(description.get("model_config") or {}) != config.architecture():
      raise UserError(f"{args.deltas} was tuned on another backbone config than {args.checkpoint}; "
                      f"pass the backbone in its export.json "
                      f"({description.get('initial_checkpoint_path')})")
    if set(tensors) == {"params/prompt/prompt"} and not description.get("plan"):
      prompt = tensors["params/prompt/prompt"]
      _check_prompt(prompt, args.deltas, config, args.checkpoint)
      write = lambda out: peft.save_peft_prompt(out, prompt, config,
                                                base_model_name_or_path=hf_output)
      what = f"{prompt.shape[0]} virtual tokens"
    elif "params/prompt/shared/prompt" in tensors:
      raise UserError(f"{args.deltas} holds a multi-task prompt; PEFT takes one prompt per "
                      "adapter: export each task's with --prompt MODEL_DIR/prompts/step_N/<task>.npy")
    else:
      pairs, rank, alpha = lora_pairs(tensors, description, args.deltas)
      write = lambda out: peft.save_peft_lora(out, pairs, rank, alpha, config,
                                              base_model_name_or_path=hf_output)
      what = f"LoRA r={rank} alpha={alpha:g} on {len(pairs)} modules"
  # Each folder is written beside its place and renamed into it: a failed export leaves none.
  if hf_output:  # written first: the adapter names it by its absolute path
    with fs.staged_folder(hf_output, "exporting") as staging:
      params = sources.read_backbone(args.checkpoint, "--checkpoint",
                                     args.relative_attention_max_distance)[1]
      hf.save_hf(staging, config, jax.tree_util.tree_map(np.asarray, params))
  with fs.staged_folder(args.output, "exporting") as staging:
    write(staging)
  print(f"wrote PEFT adapter {os.path.abspath(args.output)} ({what})"
        + (f" on Hugging Face backbone {hf_output}" if hf_output else
           "; without --hf_output it names no base model (set base_model_name_or_path in "
           "adapter_config.json, or rerun with --hf_output DIR)"))
  return 0
