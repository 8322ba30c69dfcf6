"""SuperGLUE tasks `super_glue_<task>[_prefixed|_rank]` from TFDS `super_glue/*`.

Formats follow T5 (fields `name: value` in T5's order) without the benchmark
prefix unless `_prefixed`; verbalizers are TFDS's label names. AX-b and AX-g
(test split only, labelled) are cast as RTE, as T5 does, so an RTE prompt can
be evaluated on them.
"""
import functools

from prompt_tuning.tasks import formats, metrics, postprocessors
from prompt_tuning.tasks.local_files import super_glue_files
from prompt_tuning.tasks.registry import add_task_variants

VERSION = "1.0.2"
SPLITS = {"train": "train", "validation": "validation", "test": "test"}
BOOL_LABELS = ("False", "True")
NLI2_LABELS = ("entailment", "not_entailment")
CB_LABELS = ("entailment", "contradiction", "neutral")
COPA_LABELS = ("choice1", "choice2")

# task -> (official folder, T5 field order as (shown name, raw key), labels, metrics)
_CLASSIFICATION = {
    "boolq": ("BoolQ", [("passage", "passage"), ("question", "question")], BOOL_LABELS,
              [metrics.accuracy]),
    "cb": ("CB", [("hypothesis", "hypothesis"), ("premise", "premise")], CB_LABELS,
           [metrics.accuracy, functools.partial(metrics.macro_f1, labels=CB_LABELS)]),
    "copa": ("COPA", [("choice1", "choice1"), ("choice2", "choice2"), ("premise", "premise"),
                      ("question", "question")], COPA_LABELS, [metrics.accuracy]),
    "rte": ("RTE", [("hypothesis", "hypothesis"), ("premise", "premise")], NLI2_LABELS,
            [metrics.accuracy]),
    "wic": ("WiC", [("sentence1", "sentence1"), ("sentence2", "sentence2"), ("word", "word")],
            BOOL_LABELS, [metrics.accuracy]),
}

# Diagnostics, formatted as RTE (AX-b's sentence1/2 play premise/hypothesis).
_DIAGNOSTICS = {
    "axb": ("AX-b", [("hypothesis", "sentence2"), ("premise", "sentence1")],
            [functools.partial(metrics.matthews_corr, labels=("not_entailment", "entailment"))]),
    "axg": ("AX-g", [("hypothesis", "hypothesis"), ("premise", "premise")], [metrics.accuracy]),
}


# The diagnostics (test split only), not part of the `super_glue` mixture.
DIAGNOSTICS = [f"super_glue_{t}" for t in _DIAGNOSTICS]


def _tfds(config: str) -> str:
  return f"super_glue/{config}:{VERSION}"


def register():
  """Registers every SuperGLUE task variant; returns the plain task names."""
  plain = []
  for task, (folder, fields, labels, metric_fns) in _CLASSIFICATION.items():
    add_task_variants(
        f"super_glue_{task}", "super_glue", splits=SPLITS, tfds_name=_tfds(task),
        local=super_glue_files(task, folder),
        make_format=functools.partial(formats.fields_format, fields, labels),
        prefix=task, postprocess_fn=postprocessors.label, metric_fns=metric_fns,
        label_names=labels)
    plain.append(f"super_glue_{task}")

  add_task_variants(
      "super_glue_multirc", "super_glue", splits=SPLITS, tfds_name=_tfds("multirc"),
      local=super_glue_files("multirc", "MultiRC"),
      make_format=functools.partial(formats.multirc_format, BOOL_LABELS), prefix="multirc",
      postprocess_fn=postprocessors.multirc,
      metric_fns=[functools.partial(metrics.multirc, labels=BOOL_LABELS)],
      label_names=BOOL_LABELS)
  add_task_variants(
      "super_glue_record", "super_glue", splits=SPLITS, tfds_name=_tfds("record"),
      local=super_glue_files("record", "ReCoRD"),
      make_format=formats.record_format, prefix="record", postprocess_fn=postprocessors.answers,
      metric_fns=[metrics.max_over_answers_em_f1], train_fn=formats.answers_train)
  add_task_variants(
      "super_glue_wsc", "super_glue", splits=SPLITS, tfds_name=_tfds("wsc.fixed"),
      local=super_glue_files("wsc", "WSC"),
      make_format=formats.wsc_format, prefix="wsc", postprocess_fn=postprocessors.wsc,
      metric_fns=[metrics.wsc_accuracy], train_fn=formats.wsc_train)
  plain += ["super_glue_multirc", "super_glue_record", "super_glue_wsc"]

  for task, (folder, fields, metric_fns) in _DIAGNOSTICS.items():
    add_task_variants(
        f"super_glue_{task}", "super_glue", splits={"test": "test"}, tfds_name=_tfds(task),
        local=super_glue_files(task, folder),
        make_format=functools.partial(formats.fields_format, fields, NLI2_LABELS),
        prefix="rte", postprocess_fn=postprocessors.label, metric_fns=metric_fns,
        label_names=NLI2_LABELS)
  return plain
