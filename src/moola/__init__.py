"""moola: market data to trained, honestly evaluated and served deep sequence models.

The handful of names a user needs, imported on first use (so ``import moola.data`` does not load
torch)::

    from moola import SequenceClassifier, Trainer, TrainConfig, from_checkpoint, Predictor, PRESETS
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "SequenceClassifier": "moola.pipelines.classify",
    "Trainer": "moola.training",
    "TrainConfig": "moola.training",
    "from_checkpoint": "moola.training",
    "Predictor": "moola.inference",
    "PRESETS": "moola.models",
    "preset_config": "moola.models",
    "build_model": "moola.models",
    "describe_presets": "moola.models",
}

__all__ = [
    "PRESETS",
    "Predictor",
    "SequenceClassifier",
    "TrainConfig",
    "Trainer",
    "__version__",
    "build_model",
    "describe_presets",
    "from_checkpoint",
    "preset_config",
]

if TYPE_CHECKING:
    from moola.inference import Predictor
    from moola.models import PRESETS, build_model, describe_presets, preset_config
    from moola.pipelines.classify import SequenceClassifier
    from moola.training import TrainConfig, Trainer, from_checkpoint


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'moola' has no attribute {name!r}; public names: {', '.join(__all__)}")


def __dir__() -> list[str]:
    return sorted(__all__)
