"""`prompt-tuning eval --gin_file=... --gin.PROMPT_FILE=...`: metrics of saved prompts."""
from prompt_tuning import gin_utils
from prompt_tuning.train import eval_run

add_arguments, run = gin_utils.gin_command(eval_run.evaluate)
