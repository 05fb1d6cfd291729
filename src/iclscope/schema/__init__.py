"""The one config schema: the training TOML (``config.py``, pydantic models with one-line errors naming
key, value and what is allowed, and the nearest valid name for an unknown key) and the command line's
value types (``cli.py``, argparse ``type=`` callables, and ``check_device``)."""

from .cli import (check_device, choice, device, fraction_list, key_value, make_fraction_list, name_list,
                  nonnegative_int, positive_count, positive_float, positive_int, probability, revision, seed_list)
from .config import (CLAMP_KIND_KEYS, CLAMP_KINDS, DATA_SECTIONS, EVAL_DEFAULTS, SECTIONS, TRAIN_DEFAULTS,
                     ClampEntry, EvalSection, FewShotSection, MixtureSection, ModelSection, TrainSection,
                     HEAD_SITES, LAYER_SITES, validate_train_config)

__all__ = [
    "ModelSection", "FewShotSection", "MixtureSection", "TrainSection", "EvalSection", "ClampEntry",
    "TRAIN_DEFAULTS", "EVAL_DEFAULTS", "SECTIONS", "DATA_SECTIONS", "CLAMP_KINDS", "CLAMP_KIND_KEYS",
    "HEAD_SITES", "LAYER_SITES", "validate_train_config", "positive_int", "nonnegative_int", "positive_count", "positive_float",
    "probability", "fraction_list", "make_fraction_list", "seed_list", "name_list", "choice", "key_value",
    "revision", "device", "check_device",
]
