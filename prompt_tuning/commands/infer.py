"""`prompt-tuning infer --gin_file=... --gin.PROMPT_FILE=...`: predictions of a saved prompt."""
from prompt_tuning import configurables
from prompt_tuning.train import eval_run

# Left to the user by runs/prompt_infer.gin (T5X's INFER_OUTPUT_DIR / CHECKPOINT_PATH work too).
REQUIRED_MACROS = ("MODEL_DIR (or INFER_OUTPUT_DIR)", "MIXTURE_OR_TASK_NAME",
                   "INITIAL_CHECKPOINT_PATH (or CHECKPOINT_PATH)", "PROMPT_FILE")
EXAMPLE = ("prompt-tuning infer --gin_file=models/t5_1_1_base_prompt.gin "
           "--gin_file=runs/prompt_infer.gin --gin.MODEL_DIR=\"'/tmp/rte'\" "
           "--gin.MIXTURE_OR_TASK_NAME=\"'super_glue_rte'\" "
           "--gin.INITIAL_CHECKPOINT_PATH=\"'/path/to/checkpoint_1100000'\" "
           "--gin.PROMPT_FILE=\"'/tmp/rte/prompts/step_1130000.npy'\"")

add_arguments, run = configurables.gin_command(eval_run.infer, REQUIRED_MACROS, EXAMPLE)
