# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Orthogonalized Policy Optimization (OPO) for Hugging Face TRL.

The package is the algorithm a TRL user imports: `OPOConfig`, `OPOTrainer` and the pure loss functions of
`opo_trl.core`. The research harness (the `opo-trl` command, run files, comparisons, statistics, rewards and data for
the recipes) lives in `opo_trl.harness`, which the algorithm never imports.

Imports are lazy, as in TRL: `import opo_trl` loads neither torch nor TRL until a name is used, so that the command
line and its one-line configuration errors start fast.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING


try:
    __version__ = version("opo-trl")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_import_structure = {
    "config": ["OPOConfig"],
    "trainer": ["OPOTrainer"],
}
_name_to_module = {name: module for module, names in _import_structure.items() for name in names}

__all__ = ["OPOConfig", "OPOTrainer", "core", "__version__"]

if TYPE_CHECKING:
    from . import core
    from .config import OPOConfig
    from .trainer import OPOTrainer


def __getattr__(name: str):
    if name in _name_to_module:
        value = getattr(importlib.import_module(f".{_name_to_module[name]}", __name__), name)
    elif name == "core":
        value = importlib.import_module(".core", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted({*globals(), *__all__})
