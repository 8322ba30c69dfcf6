"""configs/runs/: gin files, a package so `prompt_tuning/configs/runs/NAME.gin` resolves."""
