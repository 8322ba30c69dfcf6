"""`prompt-tuning train --gin_file=... --gin.KEY=VALUE`: the T5X-style train entry point."""
from prompt_tuning import gin_utils

add_arguments, run = gin_utils.gin_command("prompt_tuning.train.trainer", "train")
