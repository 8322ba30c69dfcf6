"""`prompt-tuning xprompt --gin_file=...`: XPrompt's tune -> prune -> rewind, resumable.

Same gin files as `prompt-tuning train` plus `methods/xprompt.gin`, e.g.

    prompt-tuning xprompt --gin_file=models/t5_1_1_base_prompt.gin \
      --gin_file=methods/xprompt.gin --gin_file=runs/prompt_finetune.gin \
      --gin.MODEL_DIR="'/tmp/rte_xprompt'" --gin.run_xprompt.metric_name="'accuracy'"

See `prompt_tuning.methods.xprompt.driver` for the stages and the files written.
"""
from prompt_tuning import configurables, gin_utils
from prompt_tuning.methods.xprompt.driver import run_xprompt


def add_arguments(parser) -> None:
  gin_utils.add_gin_arguments(parser)


def run(args) -> int:
  configurables.setup_from_args(args)
  summary = gin_utils.call(run_xprompt)
  if "interrupted" in summary:
    return 0
  print(f"report: {summary['report']}\nheatmap: {summary['heatmap']}\n"
        f"final prompt: {summary['final_prompt']} (evaluate it with prompts/from_file.gin)",
        flush=True)
  return 0
