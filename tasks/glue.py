"""GLUE tasks `glue_<task>[_prefixed|_rank]` from TFDS `glue/*`.

`glue_mnli` trains on MNLI and validates on the matched dev set;
`glue_mnli_matched` / `glue_mnli_mismatched` are eval-only (validation and
test splits), so the `glue` mixture reports both without training MNLI twice.
"""
import functools

from prompt_tuning.tasks import formats, metrics, postprocessors
from prompt_tuning.tasks.local_files import glue_files
from prompt_tuning.tasks.registry import add_task_variants

VERSION = "2.0.0"
SPLITS = {"train": "train", "validation": "validation", "test": "test"}
MNLI_LABELS = ("entailment", "neutral", "contradiction")
NLI2_LABELS = ("entailment", "not_entailment")


def _pair(a: str, b: str):
  return [(a, a), (b, b)]


# task -> (official folder, fields, labels, metrics)
_CLASSIFICATION = {
    "cola": ("CoLA", [("sentence", "sentence")], ("unacceptable", "acceptable"),
             [functools.partial(metrics.matthews_corr, labels=("unacceptable", "acceptable"))]),
    "sst2": ("SST-2", [("sentence", "sentence")], ("negative", "positive"), [metrics.accuracy]),
    "mrpc": ("MRPC", _pair("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
             [functools.partial(metrics.f1, labels=("not_equivalent", "equivalent")),
              metrics.accuracy]),
    "qqp": ("QQP", _pair("question1", "question2"), ("not_duplicate", "duplicate"),
            [functools.partial(metrics.f1, labels=("not_duplicate", "duplicate")),
             metrics.accuracy]),
    "qnli": ("QNLI", _pair("question", "sentence"), NLI2_LABELS, [metrics.accuracy]),
    "rte": ("RTE", _pair("sentence1", "sentence2"), NLI2_LABELS, [metrics.accuracy]),
}

_MNLI_FIELDS = [("hypothesis", "hypothesis"), ("premise", "premise")]
# task -> (canonical -> TFDS split, canonical -> official file)
_MNLI = {
    "mnli": ({"train": "train", "validation": "validation_matched", "test": "test_matched"},
             {"train": "train.tsv", "validation": "dev_matched.tsv",
              "test": "test_matched.tsv"}),
    "mnli_matched": ({"validation": "validation_matched", "test": "test_matched"},
                     {"validation": "dev_matched.tsv", "test": "test_matched.tsv"}),
    "mnli_mismatched": ({"validation": "validation_mismatched", "test": "test_mismatched"},
                        {"validation": "dev_mismatched.tsv", "test": "test_mismatched.tsv"}),
}


# The `glue` mixture (MNLI's matched dev set comes with glue_mnli).
MIXTURE_TASKS = ["glue_cola", "glue_sst2", "glue_mrpc", "glue_qqp", "glue_stsb", "glue_mnli",
                 "glue_mnli_mismatched", "glue_qnli", "glue_rte"]
# Every plain GLUE task.
ALL_TASKS = ([f"glue_{t}" for t in _CLASSIFICATION] + ["glue_stsb"]
             + [f"glue_{t}" for t in _MNLI])


def _tfds(config: str) -> str:
  return f"glue/{config}:{VERSION}"


def register():
  """Registers every GLUE task variant; returns the plain names for the mixture."""
  for task, (folder, fields, labels, metric_fns) in _CLASSIFICATION.items():
    add_task_variants(
        f"glue_{task}", "glue", splits=SPLITS, tfds_name=_tfds(task),
        local=glue_files(task, folder),
        make_format=functools.partial(formats.fields_format, fields, labels),
        prefix=task, postprocess_fn=postprocessors.label, metric_fns=metric_fns,
        label_names=labels)

  add_task_variants(
      "glue_stsb", "glue", splits=SPLITS, tfds_name=_tfds("stsb"),
      local=glue_files("stsb", "STS-B"), make_format=formats.stsb_format, prefix="stsb",
      postprocess_fn=postprocessors.to_float, metric_fns=[metrics.pearson_spearman])

  for task, (splits, files) in _MNLI.items():
    add_task_variants(
        f"glue_{task}", "glue", splits=splits, tfds_name=_tfds("mnli"),
        local=glue_files("mnli", "MNLI", files),
        make_format=functools.partial(formats.fields_format, _MNLI_FIELDS, MNLI_LABELS),
        prefix="mnli", postprocess_fn=postprocessors.label, metric_fns=[metrics.accuracy],
        label_names=MNLI_LABELS)

  return list(MIXTURE_TASKS)
