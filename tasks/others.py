"""The other benchmarks of the seed papers: sentiment (IMDB, Rotten Tomatoes),
summarization (SAMSum, Multi-News) and closed-book QA (NQ-Open).

Sentiment tasks share SST-2's format and verbalizers (`sentence: ...` ->
negative/positive), so prompts transfer across them as in Lester et al.'s
domain-shift experiments. Rotten Tomatoes is not in TFDS: it reads
`rotten_tomatoes/{train,validation,test}.jsonl` (`{"text", "label"}` rows, as a
Hugging Face `rotten_tomatoes` export writes them) from the data directory.
IMDB has no validation split; `validation` is its test split.
"""
import functools

import tensorflow_datasets as tfds

from prompt_tuning.tasks import formats, metrics, postprocessors
from prompt_tuning.tasks.local_files import PLAIN_SPLIT_FILES, LocalFiles, jsonl_reader
from prompt_tuning.tasks.registry import add_task_variants

SENTIMENT_LABELS = ("negative", "positive")
THREE_SPLITS = {"train": "train", "validation": "validation", "test": "test"}

ROTTEN_TOMATOES_FEATURES = tfds.features.FeaturesDict({
    "text": tfds.features.Text(),
    "label": tfds.features.ClassLabel(names=["neg", "pos"]),
})


def register():
  """Registers imdb, rotten_tomatoes (+ `_rank`), samsum, multi_news, nq_open."""
  sentiment = dict(make_format=lambda prefix: formats.sentiment_format(SENTIMENT_LABELS),
                   prefix=None, postprocess_fn=postprocessors.label,
                   metric_fns=[metrics.accuracy], label_names=SENTIMENT_LABELS)
  add_task_variants("imdb", "other", tfds_name="imdb_reviews/plain_text:1.0.0",
                    splits={"train": "train", "validation": "test", "test": "test"}, **sentiment)
  add_task_variants("rotten_tomatoes", "other", splits=THREE_SPLITS,
                    local=LocalFiles("rotten_tomatoes", PLAIN_SPLIT_FILES,
                                     jsonl_reader(("text", "label"))),
                    features=ROTTEN_TOMATOES_FEATURES, **sentiment)

  summary = dict(prefix=None, postprocess_fn=postprocessors.text, metric_fns=[metrics.rouge])
  add_task_variants("samsum", "other", tfds_name="samsum:1.0.0", splits=THREE_SPLITS,
                    make_format=lambda prefix: formats.summary_format("dialogue"), **summary)
  add_task_variants("multi_news", "other", tfds_name="multi_news:2.1.0", splits=THREE_SPLITS,
                    make_format=lambda prefix: formats.summary_format("document"), **summary)

  add_task_variants("nq_open", "other", tfds_name="natural_questions_open:1.0.0",
                    splits={"train": "train", "validation": "validation"},
                    make_format=functools.partial(formats.question_answers_format,
                                                  "question", "answer"),
                    prefix=None, postprocess_fn=postprocessors.answers,
                    metric_fns=[metrics.max_over_answers_em], train_fn=formats.answers_train)
