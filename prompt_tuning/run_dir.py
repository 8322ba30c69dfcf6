"""Where every file of a run lives: the one description of the folders this project writes.

A training run's folder (`MODEL_DIR`) is a `RunDir`. The folders that hold
several runs (XPrompt's three stages, the demo, the parameter-budget sweep)
are `XPromptDir`, `DemoDir` and `SweepDir`, whose runs are `RunDir`s again;
eval and infer write into a `ResultsDir`; a run's export of its new
parameters is an `ExportDir`. Each is a list of named entries, e.g.

    prompt = Entry("prompts/{name}.npy", "the prompt the encoder sees ...")

so that `RunDir(model_dir).prompt("step_5")` is `MODEL_DIR/prompts/step_5.npy`;
an entry without `{fields}` reads as a plain attribute (`run.train_summary`),
and one with a `layout` gives that folder object (`run.export("best").tensors`).

No other module joins a file name onto a run folder, so adding a file to a
layout is adding one entry. docs/architecture.md shows every layout as
`python -m prompt_tuning.run_dir` prints it (tests/test_run_dir.py checks both).
"""
import dataclasses
import string
from typing import Any, List, Optional

from prompt_tuning import fs


class Entry:
  """One file or folder of a layout: a path pattern (a folder's ends in '/') and what it holds.

  Read on a folder object, an entry without `{fields}` is its path, or with
  `layout` that folder object; an entry with fields is a function of them
  (positional in the pattern's order, or by name).
  """

  def __init__(self, pattern: str, what: str, layout: Optional[type] = None,
               shown: Optional[str] = None):
    self.pattern, self.what, self.layout = pattern, what, layout
    self.shown = shown  # how the docs show it, where the pattern alone would not say
    self.fields = tuple(f for _, f, _, _ in string.Formatter().parse(pattern) if f)
    self.name = ""

  def __set_name__(self, owner: type, name: str) -> None:
    self.name = name

  def __get__(self, folder: Optional["Folder"], owner: Optional[type] = None) -> Any:
    if folder is None:
      return self
    if not self.fields:
      return self._at(folder, self.pattern)

    def path(*args: Any, **kwargs: Any) -> Any:
      return self._at(folder, self.pattern.format(**dict(zip(self.fields, args)), **kwargs))
    return path

  def _at(self, folder: "Folder", relative: str) -> Any:
    parts = [p for p in relative.rstrip("/").split("/") if p]
    path = fs.join(folder.root, *parts) if parts else folder.root
    return self.layout(path) if self.layout else path

  def display(self) -> str:
    if self.shown:
      return self.shown
    return self.pattern.replace("{", "<").replace("}", ">")


@dataclasses.dataclass(frozen=True)
class Folder:
  """A folder with a layout; `root` is the folder itself (a local path or a gs:// URL)."""
  root: str

  def __post_init__(self):
    object.__setattr__(self, "root", str(self.root))

  def __str__(self) -> str:
    return self.root

  @classmethod
  def entries(cls) -> List[Entry]:
    """The layout's entries in the order the class declares them (its own, not a base's)."""
    return [v for v in vars(cls).values() if isinstance(v, Entry)]


class ExportDir(Folder):
  """A run's export of its new parameters (`exports/<name>/`, or any `DELTAS_FILE` folder)."""
  tensors = Entry("deltas.safetensors", "`\"<collection>/<parameter path>\"` -> array, e.g. "
                  "`params/encoder/layers_0/attention/query/lora/a` `[E, r]`")
  description = Entry("export.json", "what they are: format, step, methods, the delta plan "
                      "(regexes and insertion settings), prompt length, the backbone's model "
                      "config and path, trainable patterns, every tensor's shape and dtype, the "
                      "records; written last, so a folder without it is an interrupted export")
  record = Entry("{name}", "a copy of each of the plan's records, e.g. `apet_selection.json` "
                 "(eval: `APET_SELECTION_FILE`)", shown="<record>")


class InferenceEvalDir(Folder):
  """T5X's `inference_eval/` folder (seqio's JSON and TensorBoard loggers' files), written at
  every evaluation: train-time in `MODEL_DIR/inference_eval/`, `prompt-tuning eval` in
  `<its results folder>/inference_eval/`."""
  predictions = Entry("{task}-{step:06}.jsonl", "one JSON object per example: `input` (the "
                      "task's features: `inputs_pretokenized`, `targets_pretokenized`, ...), "
                      "`target` (the postprocessed target), then `output` and `prediction` "
                      "(decoding) or `score` (rank classification)", shown="<task>-<step:06>.jsonl")
  metrics = Entry("{task}-metrics.jsonl", "`{\"step\": N, <metric>: value}`, a line appended per "
                  "evaluation")
  tensorboard = Entry("{task}/", "TensorBoard scalars `eval/<metric>` at the evaluated step")


class ResultsDir(Folder):
  """What `prompt-tuning eval` / `infer` write: `MODEL_DIR/eval/`, `MODEL_DIR/inference/`, or
  T5X's `EVAL_OUTPUT_DIR` / `INFER_OUTPUT_DIR`."""
  metrics = Entry("metrics_{split}.json", "eval: every task's metrics on the split")
  inference_eval = Entry("inference_eval/", "eval: T5X's prediction files and TensorBoard "
                         "scalars, at the evaluated step", layout=InferenceEvalDir)
  predictions = Entry("{task}-{split}.jsonl", "infer: one `{\"inputs\", \"targets\", "
                      "\"prediction\"}` line per example")


class RunDir(Folder):
  """`MODEL_DIR` of one training run: what `trainer.train` writes, resumes from and exports."""
  checkpoints = Entry("checkpoints/", "Orbax's checkpoint manager: keep-N "
                      "(`train.keep_checkpoints`), atomic saves")
  checkpoint = Entry("checkpoints/{step}/", "trainable params + optimizer state + step "
                     "(absolute, as in T5X), and JSON metadata (batches consumed, the initial "
                     "step, backbone path, a checksum of every saved array). A rerun with the same "
                     "`MODEL_DIR` resumes from the newest intact step and sees the same data order")
  corrupt_checkpoint = Entry("checkpoints_corrupt/{step}-{time}/", "a damaged step "
                             "(truncated/lost file, checksum mismatch) that a rerun moved aside, "
                             "with one printed line, before resuming from the previous step")
  lock = Entry(".lock", "held while a run writes `MODEL_DIR`: a second live run is refused; a "
               "lock of a dead process on the same host is taken over")
  damaged = Entry("damaged/{time}/{path}", "a file a rerun found damaged when it read it back (a "
                  "truncated prompt or export, one that no longer matches its checkpoint), moved "
                  "here, with one printed line, before it was written again from the checkpoint",
                  shown="damaged/<time>/<path>")
  prompt = Entry("prompts/{name}.npy", "the prompt the encoder sees, `[PROMPT_LENGTH, d_model]` "
                 "float32: `step_<N>` at every save, `best` at the best evaluation")
  task_prompts = Entry("prompts/{name}/", "a multi-task prompt: one `<task>.npy` `[P, E]` file "
                       "per task, each a plain prompt")
  task_prompt = Entry("prompts/{name}/{task}.npy", "one task's prompt of a multi-task prompt")
  best_record = Entry("prompts/best.json", "the best evaluation so far by "
                      "`train.early_stopping_metric` (step, metric, value; with "
                      "`train.early_stopping_patience` to stop early)")
  best_trainable = Entry("best/trainable.npz", "the trainable tree of the best evaluation, for "
                         "every method")
  export = Entry("exports/{name}/", "every new parameter (prompt, LoRA, adapters, APET's "
                 "insertions, ...), `step_<N>` at every save and `best`, which `eval` loads with "
                 "`DELTAS_FILE` and `export --deltas` turns into a PEFT LoRA adapter",
                 layout=ExportDir)
  record = Entry("{name}", "a delta plan's records, e.g. APET's `apet_selection.json` (the "
                 "positions the run trains); a resume that would select others is refused",
                 shown="<record>")
  config = Entry("config.gin", "the operative gin config, its last line a checksum (written "
                 "through `config.gin.tmp`; a damaged one is refused, naming it); a rerun whose "
                 "config changes a result-changing binding (not e.g. `TRAIN_STEPS`, "
                 "`EVAL_PERIOD`, `CHECKPOINT_PERIOD`) is refused unless "
                 "`--gin.train.allow_config_change=True`")
  train_tensorboard = Entry("train/", "TensorBoard scalars of training under T5X's tags "
                            "(`loss`, `accuracy`, `learning_rate`, `z_loss`, "
                            "`timing/steps_per_second`, `timing/seqs_per_second`) and ours "
                            "(`grad_norm`, `trainable_norm`, `prompt_norm`, a method's terms, "
                            "`timing/examples_per_second`, `timing/compiled_programs`)")
  inference_eval = Entry("inference_eval/", "train-time evaluations, as T5X writes them: "
                         "predictions, metrics and TensorBoard scalars per task",
                         layout=InferenceEvalDir)
  train_summary = Entry("train_summary.json", "loss and eval history, updated at each checkpoint "
                        "and extended (never replaced) by a resumed run; the run's summary at "
                        "its end")
  eval = Entry("eval/", "`prompt-tuning eval`'s results, unless `EVAL_OUTPUT_DIR` is set",
               layout=ResultsDir)
  inference = Entry("inference/", "`prompt-tuning infer`'s predictions, unless "
                    "`INFER_OUTPUT_DIR` is set", layout=ResultsDir)


class XPromptStageDir(RunDir):
  """A training stage of XPrompt (1: prompt tuning, 3: rewinding): a `RunDir`, plus:"""
  kept_trainable = Entry("trainable.npz", "the trainable tree the stage keeps (its best "
                         "evaluation's, else its last)")
  stage_record = Entry("stage.json", "the stage's summary, written last: the stage is finished "
                       "exactly when it exists")


class XPromptSearchDir(Folder):
  """XPrompt's stage 2: importance scores and the pruning search."""
  token_mask = Entry("token_mask.npy", "the chosen token mask `[P]`")
  piece_mask = Entry("piece_mask.npy", "the chosen piece mask `[P, pieces]`")
  report = Entry("report.json", "importance scores, final `token_mask`/`piece_mask`, chosen "
                 "ratios, the metric of every candidate and stage")
  heatmap = Entry("importance.png", "the importance scores and the kept pieces")
  stage_record = Entry("stage.json", "the search's summary, written last")


class XPromptDir(Folder):
  """`MODEL_DIR` of `prompt-tuning xprompt`: tune, prune, rewind."""
  stage1 = Entry("stage1_prompt_tuning/", "stage 1, plain prompt tuning with the masks at one",
                 layout=XPromptStageDir)
  search = Entry("xprompt/", "stage 2, the pruning search", layout=XPromptSearchDir)
  stage3 = Entry("stage3_rewinding/", "stage 3, the kept values reset to stage 1's and "
                 "retrained with the masks fixed", layout=XPromptStageDir)
  final_prompt = Entry("prompts/final.npy", "the prompt the encoder sees, exact zeros where "
                       "pruned; evaluates with the plain prompt-tuning config")
  summary = Entry("xprompt_summary.json", "what `run_xprompt` returns")


class SweepCellDir(RunDir):
  """One cell of the sweep: a `RunDir`, plus:"""
  done = Entry("sweep_cell.json", "the cell's row, written when it finished: a rerun skips it")


class DemoDir(Folder):
  """`MODEL_DIR` of `prompt-tuning demo`."""
  backbone = Entry("backbone/", "the pretrained tiny T5 1.1 (a backbone folder), reused when "
                   "complete")
  baseline = Entry("baseline/", "the `MODEL_DIR` the random-prompt baseline's config names; "
                   "it only evaluates, and writes nothing")
  method = Entry("{method}/", "one tuning run per method (a `RunDir`; XPrompt's an `XPromptDir`)")
  summary = Entry("demo_summary.json", "the table's numbers, histories and settings")
  curves = Entry("learning_curves.png", "every method's loss and held-out exact match")


class SweepDir(Folder):
  """`MODEL_DIR` of `prompt-tuning sweep`."""
  backbone = Entry("backbone/", "the demo's pretrained tiny T5 1.1 when no "
                   "`INITIAL_CHECKPOINT_PATH` is given, reused when complete")
  chance = Entry("chance.json", "the frozen backbone's metric on the task")
  cell = Entry("cells/{cell}/", "one trainer run per method and budget (and APET seed)",
               layout=SweepCellDir)
  summary = Entry("sweep.json", "table, thresholds, spread")
  figure = Entry("sweep.png", "metric against trainable parameters, per method")


# Every layout, in the order docs/architecture.md shows them.
LAYOUTS = (RunDir, ExportDir, ResultsDir, InferenceEvalDir, XPromptDir, XPromptStageDir,
           XPromptSearchDir, DemoDir, SweepDir, SweepCellDir)


def layout_markdown() -> str:
  """Every layout as markdown tables: what docs/architecture.md shows."""
  blocks = []
  for layout in LAYOUTS:
    rows = [f"**`{layout.__name__}`**: {' '.join(layout.__doc__.split())}", "",
            "| path | what |", "| --- | --- |"]
    for entry in layout.entries():
      inside = f" (layout: `{entry.layout.__name__}`)" if entry.layout else ""
      rows.append(f"| `{entry.display()}` | {entry.what}{inside} |")
    blocks.append("\n".join(rows))
  return "\n\n".join(blocks) + "\n"


if __name__ == "__main__":
  print(layout_markdown(), end="")
