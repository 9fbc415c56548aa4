# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""Orthogonalized Policy Optimization (OPO) for Hugging Face TRL."""

from .config import OPOConfig
from .trainer import OPOTrainer


__version__ = "0.1.0"

__all__ = ["OPOConfig", "OPOTrainer", "__version__"]
