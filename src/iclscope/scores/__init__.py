"""Head scores: each a (n_layers, n_heads) table with a documented definition."""

from .attention import (attention_scores, duplicate_targets, duplicate_token_scores, induction_scores,
                        prev_token_scores, prev_token_targets)

__all__ = ["attention_scores", "duplicate_targets", "duplicate_token_scores", "induction_scores",
           "prev_token_scores", "prev_token_targets"]
