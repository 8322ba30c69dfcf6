"""prompt_tuning: parameter-efficient tuning of frozen T5 models with soft prompts."""

__version__ = "0.1.0"
