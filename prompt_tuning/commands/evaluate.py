"""`prompt-tuning eval --gin_file=... --gin.PROMPT_FILE=...`: metrics of saved prompts.

A reference eval command line runs with `python3 -m t5x.eval` replaced by
`prompt-tuning eval` (T5X's CHECKPOINT_PATH, EVAL_OUTPUT_DIR and
utils.DatasetConfig bindings included; see `train/eval_run.py`).
"""
from prompt_tuning import configurables
from prompt_tuning.train import eval_run

# Left to the user by runs/prompt_eval.gin; MODEL_DIR may be T5X's EVAL_OUTPUT_DIR instead,
# INITIAL_CHECKPOINT_PATH T5X's CHECKPOINT_PATH.
REQUIRED_MACROS = ("MODEL_DIR (or EVAL_OUTPUT_DIR)", "MIXTURE_OR_TASK_NAME",
                   "INITIAL_CHECKPOINT_PATH (or CHECKPOINT_PATH)", "PROMPT_FILE")
EXAMPLE = ("prompt-tuning eval --gin_file=models/t5_1_1_base_prompt.gin "
           "--gin_file=runs/prompt_eval.gin --gin.MODEL_DIR=\"'/tmp/rte'\" "
           "--gin.MIXTURE_OR_TASK_NAME=\"'super_glue_rte'\" "
           "--gin.INITIAL_CHECKPOINT_PATH=\"'/path/to/checkpoint_1100000'\" "
           "--gin.PROMPT_FILE=\"'/tmp/rte/prompts/step_1130000.npy'\"")

add_arguments, run = configurables.gin_command(eval_run.evaluate, REQUIRED_MACROS, EXAMPLE)
