"""`prompt-tuning eval --gin_file=... --gin.PROMPT_FILE=...`: metrics of saved prompts."""
from prompt_tuning import gin_utils

add_arguments, run = gin_utils.gin_command("prompt_tuning.train.eval_run", "evaluate")
