"""The run folders' layout: one module owns it, the docs show it, nothing else joins onto it."""
import ast
import os
import re

import pytest

from prompt_tuning import run_dir
from prompt_tuning.run_dir import DemoDir, ExportDir, ResultsDir, RunDir, SweepDir, XPromptDir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "prompt_tuning")
# Names the package gives a run folder (or a folder inside one) in the code that writes it.
RUN_FOLDER_NAMES = frozenset({"model_dir", "run_dir", "stage_dir", "search_dir", "out_dir", "root"})


def test_entries_are_paths_under_the_folder():
  run = RunDir("/runs/a")
  assert run.train_summary == "/runs/a/train_summary.json"
  assert run.prompt("step_5") == run.prompt(name="step_5") == "/runs/a/prompts/step_5.npy"
  assert run.task_prompt("best", "rte") == "/runs/a/prompts/best/rte.npy"
  assert run.checkpoint(1_100_000) == "/runs/a/checkpoints/1100000"
  assert run.train_tensorboard == "/runs/a/train"
  assert run.inference_eval.predictions("rte", 1_100_000) == (
      "/runs/a/inference_eval/rte-1100000.jsonl")
  assert run.inference_eval.metrics("rte") == "/runs/a/inference_eval/rte-metrics.jsonl"
  assert run.inference_eval.tensorboard("rte") == "/runs/a/inference_eval/rte"
  assert run.export("best") == ExportDir("/runs/a/exports/best")
  assert run.export("best").description == "/runs/a/exports/best/export.json"
  assert run.eval.metrics("validation") == "/runs/a/eval/metrics_validation.json"
  assert run.inference.predictions("rte", "test") == "/runs/a/inference/rte-test.jsonl"
  assert XPromptDir("/x").stage1.kept_trainable == "/x/stage1_prompt_tuning/trainable.npz"
  assert XPromptDir("/x").stage3.prompt("best") == "/x/stage3_rewinding/prompts/best.npy"
  assert SweepDir("/s").cell("lora_b100").done == "/s/cells/lora_b100/sweep_cell.json"
  assert DemoDir("/d").method("residual") == "/d/residual"
  assert ResultsDir("/e").inference_eval.predictions("rte", 7) == (
      "/e/inference_eval/rte-000007.jsonl")


def test_object_store_folders_join_with_slashes():
  run = RunDir("gs://bucket/run/")
  assert run.lock == "gs://bucket/run/.lock"
  assert run.export("step_3").tensors == "gs://bucket/run/exports/step_3/deltas.safetensors"


def test_architecture_doc_shows_every_layout_exactly():
  with open(os.path.join(REPO, "docs", "architecture.md")) as f:
    text = f.read()
  shown = re.search(r"<!-- run-folder layout: begin -->\n(.*)<!-- run-folder layout: end -->",
                    text, re.S)
  assert shown, "docs/architecture.md lost its run-folder layout section"
  assert shown.group(1) == run_dir.layout_markdown(), (
      "docs/architecture.md's run-folder layout differs from prompt_tuning/run_dir.py; paste the "
      "output of `python -m prompt_tuning.run_dir` between its layout markers")
  for layout in run_dir.LAYOUTS:
    for entry in layout.entries():
      assert f"| `{entry.display()}` |" in shown.group(1), (layout.__name__, entry.name)


def _names(node: ast.AST) -> set:
  return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
      n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def run_folder_joins(source: str) -> list:
  """Lines of `source` that build a path under a run folder by hand.

  A join (`os.path.join`, `fs.join`, `join`), a `+` or an f-string whose folder
  part names a run folder (`RUN_FOLDER_NAMES`).
  """
  found = []
  for node in ast.walk(ast.parse(source)):
    folder = None
    if isinstance(node, ast.Call) and node.args:
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
      if name == "join" and not isinstance(getattr(func, "value", None), ast.Constant):
        folder = node.args[0]
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
      if isinstance(node.right, (ast.Constant, ast.JoinedStr)):
        folder = node.left
    elif isinstance(node, ast.JoinedStr):
      for value, after in zip(node.values, node.values[1:]):
        if (isinstance(value, ast.FormattedValue) and isinstance(after, ast.Constant)
            and str(after.value).startswith("/")):
          folder = value.value
    if folder is not None and _names(folder) & RUN_FOLDER_NAMES:
      found.append(node.lineno)
  return found


@pytest.mark.parametrize("line", [
    "os.path.join(model_dir, 'config.gin')",
    "fs.join(self.model_dir, PROMPTS_DIR, name)",
    "run_dir + '/sweep_cell.json'",
    "f'{stage_dir}/trainable.npz'",
])
def test_the_join_check_finds_a_hand_made_run_folder_path(line):
  assert run_folder_joins(line) == [1]


def test_no_module_but_run_dir_joins_a_file_name_onto_a_run_folder():
  offenders = []
  for folder, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      path = os.path.join(folder, name)
      if not name.endswith(".py") or path == run_dir.__file__:
        continue
      with open(path) as f:
        offenders += [f"{os.path.relpath(path, REPO)}:{line}"
                      for line in run_folder_joins(f.read())]
  assert not offenders, (f"{offenders}: add the file to a layout in prompt_tuning/run_dir.py "
                         "and use its entry")
