"""configs/prompts/: gin files, a package so `prompt_tuning/configs/prompts/NAME.gin` resolves."""
