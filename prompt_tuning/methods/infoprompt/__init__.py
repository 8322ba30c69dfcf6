"""InfoPrompt (Wu et al. 2023, arXiv 2306.04933): prompt tuning with two
mutual-information terms, `L = L_pred − β·I(P; Z | X) − γ·I(P; θ | X)`.

* `estimators`: the InfoNCE bound.
* `sampling`: per-example negatives from `fold_in(key, example_id)`.
* `representations`: which vectors are scored (prompt queries, Z, θ).
* `modules`: critics, the Gaussian heads f_μ/f_σ, `InfoPromptHeads`, `PromptGenerator`.
* `loss`: `InfoPromptConfig`, `is_active`, `mutual_information`, `extra_loss`.
"""
from prompt_tuning.methods.infoprompt.estimators import info_nce
from prompt_tuning.methods.infoprompt.loss import (InfoPromptConfig, extra_loss, is_active,
                                                   make_heads, mutual_information)
from prompt_tuning.methods.infoprompt.modules import (Critic, GaussianHead,
                                                      InfoPromptHeads, PromptGenerator)
from prompt_tuning.methods.infoprompt.representations import (label_vectors, masked_mean,
                                                              prompt_queries,
                                                              select_representation)
