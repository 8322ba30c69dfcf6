"""Prompt initializers on a classification with label words: uniform, sampled vocab, class labels.

    python experiments/prompt_initializers.py --out /tmp/prompt_initializers
        [--lengths 10 20] [--seeds 0 1 2 3 4] [--train_examples 16] [--steps 150]

Lester et al. 2021 (§3.2, Fig. 3b) compare initializing the prompt from random
uniform values (here the reference code's [0, 0.5), the default), from sampled
vocabulary embeddings and from the embeddings of the task's class labels, and find
class labels best and uniform worst at small scale. The claim needs a task with
label words: `demo_bare_max` (the largest digit of a digit string; labels
"0".."9", digits whose embeddings the demo backbone pretrained; the operation
itself was never pretrained), cut to `--train_examples` training examples.
Class-label init fills the first 10 prompt tokens with the labels' embeddings and
the rest from the sampled vocabulary, as the reference does. Same steps, batch 16
and seeds for all; selection on validation, report on the disjoint test split
(`demo_grid`).
Writes `OUT/results.json` and `OUT/table.md` (test exact match, mean ± sd).
"""
import argparse
import collections
import os
import sys

import gin
import seqio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_grid  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning.demo import tasks  # pylint: disable=wrong-import-position

# The demo's byte vocabulary for the label words (the initializer's default is T5's).
gin.external_configurable(seqio.ByteVocabulary, module="seqio")
LABELS = ("CLASS_LABELS = " + repr(list(tasks.LABEL_WORDS)),
          "class_labels.vocabulary = @seqio.ByteVocabulary()")
METHODS = {
    # The default initializer: the reference code's uniform [0, 0.5).
    "uniform": (demo_grid.PLAIN, ()),
    # The demo's task bindings restrict the population to the 256 byte symbols.
    "sampled_vocab": ((*demo_grid.PLAIN, "prompts/from_sampled_vocab.gin"), ()),
    "class_labels": ((*demo_grid.PLAIN, "prompts/from_class_labels.gin"), LABELS),
}


def majority_baseline(operation: str) -> float:
  """Test exact match of always answering the most frequent training label."""
  train = collections.Counter(t for _, t in tasks.examples(operation, "train", False))
  label = train.most_common(1)[0][0]
  test = [t for _, t in tasks.examples(operation, "test", False)]
  return sum(t == label for t in test) / len(test)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/prompt_initializers")
  parser.add_argument("--lengths", type=int, nargs="+", default=[10, 20])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--train_examples", type=int, default=64, choices=tasks.FEW_SHOT_SIZES)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--eval_period", type=int, default=15)
  args = parser.parse_args(argv)
  if min(args.lengths) < len(tasks.LABEL_WORDS):
    parser.error(f"class-label init needs prompts of >= {len(tasks.LABEL_WORDS)} tokens")
  backbone_dir = demo_grid.backbone(args.out)
  task = tasks.few_shot_task_name("max", args.train_examples)

  results, table = demo_grid.methods_by_length(args.out, backbone_dir, task, METHODS,
                                                args.lengths, args.seeds, args.steps,
                                                args.eval_period)
  demo_grid.write_outputs(args.out, results, table + "\n\nmajority-label baseline (test): "
                          f"{majority_baseline('max'):.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
