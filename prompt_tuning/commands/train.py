"""`prompt-tuning train --gin_file=... --gin.KEY=VALUE`: the T5X-style train entry point.

A reference command line runs with `python3 -m t5x.train` replaced by
`prompt-tuning train`; `TRAIN_STEPS` is the absolute step to stop at, counting
the initial checkpoint's step, as in T5X.
"""
from prompt_tuning import configurables
from prompt_tuning.train import trainer

# Left to the user by runs/prompt_finetune.gin (tests check the list against it).
REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "INITIAL_CHECKPOINT_PATH")
EXAMPLE = ("prompt-tuning train --gin_file=models/t5_1_1_base_prompt.gin "
           "--gin_file=runs/prompt_finetune.gin --gin.MODEL_DIR=\"'/tmp/rte'\" "
           "--gin.MIXTURE_OR_TASK_NAME=\"'super_glue_rte'\" "
           "--gin.INITIAL_CHECKPOINT_PATH=\"'/path/to/checkpoint_1100000'\" "
           "--gin.TRAIN_STEPS=1_130_000")

add_arguments, run = configurables.gin_command(trainer.train, REQUIRED_MACROS, EXAMPLE)
