"""configs/methods/: gin files, a package so `prompt_tuning/configs/methods/NAME.gin` resolves."""
