"""The reference code's sst2-demo.sh and sst2-demo-eval.sh, with only the entry point swapped.

The scripts of google-research/prompt-tuning run `python3 -m t5x.train` / `t5x.eval`;
here the same command lines run `prompt-tuning train` / `prompt-tuning eval`, built
as the scripts build them (gin search paths from `prompt_tuning.scripts.find_module`,
gin files named `prompt_tuning/configs/...`, the reference's task name and module,
`TRAIN_STEPS=1_150_000`, `--tfds_data_dir`, T5X's eval bindings), from a folder
outside the repository. Substituted, as a user's copy would be: MODEL_DIR,
EVAL_DIR and TFDS_DATA_DIR; the pretrained checkpoint (a tiny random T5X
checkpoint the test writes, at step 1,149,998 so that TRAIN_STEPS=1_150_000 is
2 steps, as it is 50,000 steps from the real checkpoint_1100000); the model gin
file (t5_1_1_tiny_prompt.gin for t5_1_1_base_prompt.gin); the PROMPT_FILE (the
prompt the train script exported); and SST-2 comes from local files
($PROMPT_TUNING_DATA_DIR, the official TSV layout), all offline.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_eval_logs import check_predictions

INITIAL_STEP = 1_149_998
TRAIN_STEPS = "1_150_000"
FINAL_STEP = 1_150_000
TASK = "taskless_glue_sst2_v200_examples"

# The reference scripts' preamble: where gin files are searched for.
PREAMBLE = """\
set -u
T5X_DIR="`python3 -m prompt_tuning.scripts.find_module t5x`/.."
FLAXFORMER_DIR="`python3 -m prompt_tuning.scripts.find_module flaxformer`/.."
PROMPT_DIR="`python3 -m prompt_tuning.scripts.find_module prompt_tuning`/.."
echo "Searching for gin configs in:"
echo "- ${T5X_DIR}"
echo "- ${FLAXFORMER_DIR}"
echo "- ${PROMPT_DIR}"
echo "============================="
"""

TRAIN = PREAMBLE + """\
prompt-tuning train \\
  --gin_search_paths="${T5X_DIR},${FLAXFORMER_DIR},${PROMPT_DIR}" \\
  --gin_file="prompt_tuning/configs/models/t5_1_1_tiny_prompt.gin" \\
  --gin_file="prompt_tuning/configs/prompts/from_class_labels.gin" \\
  --gin_file="prompt_tuning/configs/runs/prompt_finetune.gin" \\
  --gin.CLASS_LABELS="['positive', 'negative']" \\
  --gin.MODEL_DIR="'${MODEL_DIR}'" \\
  --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'" \\
  --gin.MIXTURE_OR_TASK_MODULE="'prompt_tuning.data.glue'" \\
  --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \\
  --gin.INITIAL_CHECKPOINT_PATH="'${PRETRAINED_MODEL}'" \\
  --gin.TRAIN_STEPS="1_150_000" \\
  --gin.USE_CACHED_TASKS="False" \\
  --tfds_data_dir=${TFDS_DATA_DIR}
"""

EVAL = PREAMBLE + """\
prompt-tuning eval \\
  --gin_search_paths="${T5X_DIR},${FLAXFORMER_DIR},${PROMPT_DIR}" \\
  --gin_file="prompt_tuning/configs/models/t5_1_1_tiny_prompt.gin" \\
  --gin_file="prompt_tuning/configs/runs/prompt_eval.gin" \\
  --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'" \\
  --gin.MIXTURE_OR_TASK_MODULE="'prompt_tuning.data.glue'" \\
  --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \\
  --gin.CHECKPOINT_PATH="'${PRETRAINED_MODEL}'" \\
  --gin.EVAL_OUTPUT_DIR="'${EVAL_DIR}'" \\
  --gin.utils.DatasetConfig.split="'validation'" \\
  --gin.utils.DatasetConfig.batch_size="128" \\
  --gin.USE_CACHED_TASKS="False" \\
  --gin.PROMPT_FILE="'${PROMPT_FILE}'" \\
  --tfds_data_dir=${TFDS_DATA_DIR}
"""

POSITIVE = ["a charming journey", "great fun", "wonderful acting", "moving and smart"]
NEGATIVE = ["a dull mess", "boring and long", "a terrible script", "flat and lifeless"]


def _sst2_tsv(rows: int) -> str:
  lines = ["sentence\tlabel"]
  for i in range(rows):
    text = (POSITIVE if i % 2 else NEGATIVE)[i // 2 % 4]
    lines.append(f"{text} . \t{i % 2}")
  return "\n".join(lines) + "\n"


def write_t5x_checkpoint(path, step: int) -> None:
  """A T5X checkpoint of a tiny random T5 1.1 (T5's 32128-row vocabulary) at `step`."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.io.t5x import save_t5x  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.config import T5Config  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.initialize import backbone_shapes  # pylint: disable=g-import-not-at-top
  config = T5Config(vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                    num_encoder_layers=2, num_decoder_layers=2,
                    relative_attention_num_buckets=4, relative_attention_max_distance=8)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32), backbone_shapes(config))
  save_t5x(str(path), params, step=step)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(work dir, env): a T5X checkpoint, local SST-2 files and the scripts' variables."""
  vocab = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                       "shared", "data", "t5_vocab", "sentencepiece.model")
  if not os.path.isfile(vocab):
    pytest.skip(f"{vocab} is absent (it is present in CI and the dev machines)")
  work = tmp_path_factory.mktemp("reference")
  write_t5x_checkpoint(work / "pretrained" / f"checkpoint_{INITIAL_STEP}", INITIAL_STEP)
  sst2 = work / "data" / "glue" / "SST-2"
  sst2.mkdir(parents=True)
  (sst2 / "train.tsv").write_text(_sst2_tsv(64))
  (sst2 / "dev.tsv").write_text(_sst2_tsv(6))
  bin_dir = os.path.dirname(sys.executable)  # python3 and prompt-tuning of this environment
  env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
         "TF_CPP_MIN_LOG_LEVEL": "3", "PROMPT_TUNING_VOCAB": os.path.abspath(vocab),
         "PROMPT_TUNING_DATA_DIR": str(work / "data"),
         "MODEL_DIR": str(work / "model"), "EVAL_DIR": str(work / "eval"),
         "TFDS_DATA_DIR": str(work / "tfds"),
         "PRETRAINED_MODEL": str(work / "pretrained" / f"checkpoint_{INITIAL_STEP}"),
         "PROMPT_FILE": str(work / "model" / "prompts" / f"step_{FINAL_STEP}.npy")}
  return work, env


def _bash(script: str, work, env) -> subprocess.CompletedProcess:
  proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return proc


def _scalars(log_dir, tag):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(str(log_dir))
  accumulator.Reload()
  assert tag in accumulator.Tags()["scalars"], accumulator.Tags()
  return [(e.step, e.value) for e in accumulator.Scalars(tag)]


@pytest.mark.slow
def test_sst2_demo_then_sst2_demo_eval(setup):
  work, env = setup
  train = _bash(TRAIN, work, env)
  # TRAIN_STEPS is T5X's absolute step: 2 steps from the checkpoint's 1,149,998.
  assert f"from step {INITIAL_STEP:,} to {FINAL_STEP:,}: 2 steps" in train.stdout
  model = work / "model"
  assert sorted(os.listdir(model / "checkpoints")) == [str(FINAL_STEP)]
  assert sorted(os.listdir(model / "prompts")) == [f"step_{FINAL_STEP}.npy"]
  prompt = np.load(model / "prompts" / f"step_{FINAL_STEP}.npy")
  assert prompt.shape == (100, 4) and np.isfinite(prompt).all()
  # T5X's summary folders and tags, and its prediction file of each evaluated example.
  assert [step for step, _ in _scalars(model / "train", "loss")] == [FINAL_STEP]
  assert [step for step, _ in _scalars(model / "inference_eval" / TASK, "eval/accuracy")] == [
      FINAL_STEP]
  check_predictions(model / "inference_eval" / f"{TASK}-{FINAL_STEP:06}.jsonl", 6)

  evaluated = _bash(EVAL, work, env)
  assert f"{TASK}/accuracy:" in evaluated.stdout
  assert (work / "eval" / "metrics_validation.json").exists()
  # Summaries at the evaluated prompt's step, not 0, in T5X's EVAL_OUTPUT_DIR/inference_eval.
  assert [step for step, _ in _scalars(work / "eval" / "inference_eval" / TASK,
                                       "eval/accuracy")] == [FINAL_STEP]
  check_predictions(work / "eval" / "inference_eval" / f"{TASK}-{FINAL_STEP:06}.jsonl", 6)


# sst2-demo-xxl.sh: the XXL model file and a model-parallel submesh. Substituted besides the
# above: the model is the reference's own tiny test model (its test/t5_1_1_tiny_prompt.gin, two
# heads), and the submesh (4, 4, 1, 2) (32-way model parallelism, a v3-256 slice's) becomes
# (1, 1, 1, 2) on 4 fake CPU devices: a data 2 x model 2 mesh.
TRAIN_XXL = TRAIN.replace(
    "prompt_tuning/configs/models/t5_1_1_tiny_prompt.gin",
    "prompt_tuning/configs/test/t5_1_1_tiny_prompt.gin").replace(
    "  --tfds_data_dir=${TFDS_DATA_DIR}",
    "  --gin.BATCH_SIZE=\"32\" \\\n"
    "  --gin.partitioning.PjitPartitioner.model_parallel_submesh=\"(1, 1, 1, 2)\" \\\n"
    "  --tfds_data_dir=${TFDS_DATA_DIR}")


@pytest.mark.slow
def test_sst2_demo_xxl_on_a_model_parallel_mesh(setup):
  work, env = setup
  assert "model_parallel_submesh" in TRAIN_XXL and "test/t5_1_1_tiny_prompt.gin" in TRAIN_XXL
  env = {**env, "MODEL_DIR": str(work / "model_xxl"),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  train = _bash(TRAIN_XXL, work, env)
  assert "mesh {'data': 2, 'model': 2}" in train.stdout, train.stdout[-2000:]
  assert f"from step {INITIAL_STEP:,} to {FINAL_STEP:,}: 2 steps" in train.stdout
  prompt = np.load(work / "model_xxl" / "prompts" / f"step_{FINAL_STEP}.npy")
  assert prompt.shape == (100, 4) and np.isfinite(prompt).all()
