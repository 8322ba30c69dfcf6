"""XPrompt (Ma et al. 2022): `configs/methods/xprompt.gin` and `prompt-tuning xprompt`.

`masks` holds the token/piece masks, importance scores, pruning and rewinding
(pure functions); `driver` runs the three stages on the trainer; `report`
writes report.json and the mask heatmap.
"""
