# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""Orthogonalized Policy Optimization (OPO) for Hugging Face TRL."""

from importlib.metadata import PackageNotFoundError, version

from .config import OPOConfig
from .trainer import OPOTrainer


try:
    __version__ = version("opo-trl")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["OPOConfig", "OPOTrainer", "__version__"]
