"""The training lab: train small transformers on synthetic data, with clamps at every step.

A run is a config (TOML, sections [model] [data] [train] [eval] and [[clamp]] entries) and a folder
(config.json, metrics.csv, TensorBoard events, summary.json, checkpoints/, state/, final/; see
``rundir``). Several seeds (``train.seeds = [1, 2, 3]``) train side by side as one ensemble; each seed
then has its own folder RUN/seed_S/.

    config      load_config, validate_config, data_config, model_config, token_layout, defaults
    clamps      Clamps: the config's [[clamp]] entries as interventions
    objectives  one objective per data.kind: data, loss, evaluation measures (OBJECTIVES)
    rundir      the run folder's files: state, metrics, checkpoints, summary
    trainer     Trainer (the loop) and train()
    phase       detect_phase_change
"""

from .clamps import CLAMP_KEYS, CLAMP_KINDS, Clamps
from .config import (CONFIG_DIR, DATA_KEYS, DATA_KINDS, DEFAULT_CONFIG, EVAL_DEFAULTS, MODEL_KEYS, TRAIN_DEFAULTS,
                     data_config, load_config, model_config, token_layout, validate_config)
from .objectives import OBJECTIVES, FewShotObjective, MixtureObjective, Objective, repeated_vectors
from .phase import detect_phase_change
from .rundir import RunDir
from .trainer import Trainer, TrainingDiverged, stack_groups, stack_key, train

__all__ = ["CLAMP_KEYS", "CLAMP_KINDS", "CONFIG_DIR", "DATA_KEYS", "DATA_KINDS", "DEFAULT_CONFIG", "EVAL_DEFAULTS",
           "MODEL_KEYS", "OBJECTIVES", "TRAIN_DEFAULTS", "Clamps", "FewShotObjective", "MixtureObjective", "Objective",
           "RunDir", "Trainer", "TrainingDiverged", "stack_groups", "stack_key", "data_config", "detect_phase_change", "load_config", "model_config",
           "repeated_vectors", "token_layout", "train", "validate_config"]
