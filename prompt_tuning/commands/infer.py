"""`prompt-tuning infer --gin_file=... --gin.PROMPT_FILE=...`: predictions of a saved prompt."""
from prompt_tuning import gin_utils
from prompt_tuning.train import eval_run

add_arguments, run = gin_utils.gin_command(eval_run.infer)
