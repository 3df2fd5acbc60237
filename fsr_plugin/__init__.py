"""Forward Super-Resolution (Allen-Zhu and Li, ICLR 2023) as a plugin of the training loop.

Attached to the host only through training/hooks.py (TrainingPlugin) and the public network API
(G.synthesis(ws, return_features=True)). train.py finds it through plugins.txt and calls the entry points below.
See ../shared/docs/FSR.md for the model and the measurements.
"""
import importlib.util as _importlib_util

from . import pickle_compat  # noqa: F401  (registers the import hook for older snapshots)
from .options import cli_options  # noqa: F401
from .plugin import make_plugin, register_metrics, update_training_options  # noqa: F401

if _importlib_util.find_spec(__name__ + '.synthetic') is not None:
    from . import synthetic  # noqa: F401  (registers the fsr-synthetic dataset)
