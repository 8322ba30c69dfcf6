"""Install prompt_tuning. Exact pins live in requirements.lock (used by `make`)."""
import setuptools

setuptools.setup(
    name="prompt_tuning",
    version="0.1.0",
    description="Parameter-efficient tuning of frozen T5 models with soft prompts, in JAX/Flax.",
    python_requires=">=3.11",  # jax 0.10.2 of requirements.lock
    packages=(
        setuptools.find_packages(include=["prompt_tuning", "prompt_tuning.*"])
        + ["prompt_tuning.configs", "prompt_tuning.tasks"]
        # configs/<kind>/ are packages too (as in the reference code), so gin resolves
        # `prompt_tuning/configs/models/...` to real files.
        + ["prompt_tuning.configs." + p for p in setuptools.find_packages("configs")]
    ),
    # configs/ and tasks/ sit at the top of the repository but ship inside the package.
    package_dir={
        "prompt_tuning.configs": "configs",
        "prompt_tuning.tasks": "tasks",
    },
    package_data={"prompt_tuning.configs": ["**/*.gin", "*.gin"], "": ["*.gin"]},
    include_package_data=True,
    install_requires=[
        "jax", "flax", "optax", "orbax-checkpoint", "gin-config", "sentencepiece",
        "seqio", "tensorflow", "tensorflow-text", "tensorflow-datasets", "clu",
        "tensorboard", "safetensors", "tensorstore", "msgpack", "numpy", "matplotlib",
        "rouge-score", "scipy",
    ],
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["prompt-tuning=prompt_tuning.cli:main"]},
)
