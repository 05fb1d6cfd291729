"""ICL word tasks: Todd-format task files, few-shot prompt batches, synthetic token tasks, and a
builder that makes task files from open lexical data (WordNet, FreeDict, SCOWL, countryinfo,
lemminflect). See docs/tasks.md.
"""

from .build import BUILDERS, SOURCES, available_builders, build_tasks
from .core import (
    CORRUPTIONS,
    DEFAULT_TEMPLATE,
    PromptBatch,
    Task,
    TaskError,
    Template,
    TokenTask,
    build_prompts,
    build_token_prompts,
    check_scorable,
    load_task,
    load_tasks,
    save_task,
    split,
    has_tokenizer,
    tokenizer_adds_bos,
)
from .protocol import PROTOCOL_CHOICES, Protocol
from .synthetic import random_mapping_task, synthetic_token_tasks

__all__ = [
    "Task",
    "TokenTask",
    "TaskError",
    "Template",
    "DEFAULT_TEMPLATE",
    "CORRUPTIONS",
    "PromptBatch",
    "load_task",
    "load_tasks",
    "save_task",
    "split",
    "check_scorable",
    "build_prompts",
    "build_token_prompts",
    "tokenizer_adds_bos",
    "has_tokenizer",
    "Protocol",
    "PROTOCOL_CHOICES",
    "synthetic_token_tasks",
    "random_mapping_task",
    "build_tasks",
    "available_builders",
    "BUILDERS",
    "SOURCES",
]
