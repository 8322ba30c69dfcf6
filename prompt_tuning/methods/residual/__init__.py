"""Residual Prompt Tuning (Razdaibiedina et al. 2023): `configs/methods/residual.gin`."""
from prompt_tuning.methods.residual.reparameterization import (ResidualReparameterization,
                                                               mlp_parameter_count)

__all__ = ["ResidualReparameterization", "mlp_parameter_count"]
