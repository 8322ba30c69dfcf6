"""`prompt-tuning infer --gin_file=... --gin.PROMPT_FILE=...`: predictions of a saved prompt."""
from prompt_tuning import gin_utils

add_arguments, run = gin_utils.gin_command("prompt_tuning.train.eval_run", "infer")
