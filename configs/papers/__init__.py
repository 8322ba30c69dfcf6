"""configs/papers/: one preset per paper, a package so `prompt_tuning/configs/papers/NAME.gin` resolves."""
