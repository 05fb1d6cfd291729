"""``iclscope dynamics``: head dynamics over training. Every head's induction, previous-token and FV
scores and few-shot accuracy at each checkpoint of a training-lab run or each hub revision of a model,
and whether heads change roles (induction first, FV later) more often than random heads would.

- ``checkpoints.py``: which checkpoints (a run's saved ones, hub revisions) and one architecture for all;
- ``reuse.py``: earlier scores / atlas / dynamics results standing in for a checkpoint's scores;
- ``scoring.py``: one checkpoint's scores and accuracy into its own folder (resumable);
- ``transitions.py``: role transitions with random-set baselines, and their text;
- ``figures.py``: trajectories, heat maps, accuracy, transitions;
- ``command.py``: ``run_dynamics`` (the command; its docstring describes the results folder);
- ``story.py``: ``testbed_story``, the testbed's story in numbers and words.
"""

from .checkpoints import Checkpoint, check_architectures, revision_checkpoints, run_checkpoints
from .command import SCORES, assemble, json_default, run_dynamics
from .figures import METRIC_LABELS, accuracy_figure, heatmaps_figure, trajectories_figure, transitions_figure
from .reuse import find_reusable, reuse_accuracy, reuse_candidates, reuse_scores
from .scoring import score_checkpoint
from .story import story_text, testbed_story
from .transitions import default_top, role_transitions, transition_text

__all__ = ["METRIC_LABELS", "SCORES", "Checkpoint", "accuracy_figure", "assemble", "check_architectures",
           "default_top", "find_reusable", "heatmaps_figure", "json_default", "reuse_accuracy", "reuse_candidates",
           "reuse_scores", "revision_checkpoints", "role_transitions", "run_checkpoints", "run_dynamics",
           "score_checkpoint", "story_text", "testbed_story", "trajectories_figure", "transition_text",
           "transitions_figure"]
