"""Small command-line tools run as `python -m prompt_tuning.scripts.<name>`."""
