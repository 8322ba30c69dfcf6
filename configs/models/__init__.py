"""configs/models/: gin files, a package so `prompt_tuning/configs/models/NAME.gin` resolves."""
