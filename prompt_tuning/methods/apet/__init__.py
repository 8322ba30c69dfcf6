"""APET and the PET baselines (Su et al. 2023, "Exploring the Impact of Model Scaling on
Parameter-Efficient Tuning").

  ops         the insertions: Add (ADD), Prefix (CONCAT), Adapter (PLUG), LoRA, Scale (IA3)
  baselines   gin factories of delta plans: bitfit/lora/adapter/ia3/add/concat/plug_deltas,
              and each method's trainable patterns (METHOD_PATTERNS)
  selection   APET: `select(budget, config, seed)` -> Selection (exact budget, JSON),
              `apet_deltas` for gin
  counts      closed-form `count_parameters(method, config, **settings)`

The model side is `prompt_tuning.models.deltas` (the plan mechanism) and
`T5(config, deltas=plan)`.
"""
