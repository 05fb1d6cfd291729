"""The head atlas (Yin & Steinhardt 2025; Todd et al. 2024), one file per question:

- ``tasks.py``: which tasks and prompts for a model, shots, the scoring / evaluation split;
- ``scoring.py``: attention scores and FV scores per task, as stages of the results folder;
- ``ablation.py``: the ablation study (top heads by each ranking, with exclusion, and random heads);
- ``vectors.py``: function vectors at every layer;
- ``command.py``: ``iclscope scores`` / ``iclscope atlas`` (validation, the results folder, figures, report).
"""

from ...heads import ranked_heads
from .ablation import ablation_figure, ablation_study
from .command import (check_ablation_settings, check_score_settings, folder_config, ranking_key, run_atlas,
                      run_scores, scatter_and_layers)
from .scoring import (ATTENTION_HALF, ATTENTION_N, FV_METHOD, attention_key, attention_table, fv_key,
                      fv_stage_name, score_grid, score_heads)
from .tasks import (FRACTIONS, build_eval_prompts, copy_prompts, default_shots, default_tasks, split_tasks,
                    token_layout)
from .vectors import function_vector, function_vectors, fv_summary

__all__ = ["ATTENTION_HALF", "ATTENTION_N", "FRACTIONS", "FV_METHOD", "ablation_figure", "ablation_study",
           "attention_key", "attention_table", "build_eval_prompts", "check_ablation_settings",
           "check_score_settings", "copy_prompts", "default_shots", "default_tasks", "folder_config", "fv_key",
           "fv_stage_name", "fv_summary", "function_vector", "function_vectors", "ranked_heads", "ranking_key",
           "run_atlas", "run_scores", "scatter_and_layers", "score_grid", "score_heads", "split_tasks",
           "token_layout"]
