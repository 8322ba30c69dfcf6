"""`prompt-tuning train --gin_file=... --gin.KEY=VALUE`: the T5X-style train entry point."""
from prompt_tuning import gin_utils
from prompt_tuning.train import trainer

add_arguments, run = gin_utils.gin_command(trainer.train)
