"""The self-contained CPU demo: synthetic tasks, a pretrained tiny backbone, tuned prompts."""
