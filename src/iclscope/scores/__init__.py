"""Head scores: each a (n_layers, n_heads) table with a documented definition."""

from .attention import (attention_scores, duplicate_targets, duplicate_token_scores, induction_scores,
                        prev_token_scores, prev_token_targets)
from .fv import FVResult, fv_prompts, fv_scores, fv_scores_attribution, fv_scores_reference, spearman, task_means  # noqa: F401

__all__ = ["attention_scores", "duplicate_targets", "duplicate_token_scores", "induction_scores",
           "prev_token_scores", "prev_token_targets"]
