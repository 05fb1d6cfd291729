"""Figures, self-contained HTML reports, progress displays and TensorBoard helpers for results folders.

- ``write_report(path, title, sections, findings=..., settings=..., metadata=...)``, ``Finding``,
  ``run_metadata(started=t0, **extra)``: the report page (``html.py``, templates in ``templates/``);
- ``progress(total, desc, quiet=False, unit=...)``: a tqdm bar on a terminal, log lines elsewhere;
- ``ResultsDir``: the results-folder contract (``results.py``);
- ``figures``: the shared style, ``COLORS`` and figure helpers; ``tensorboard``: grouped tags, hparams.
"""

from .html import Finding, run_metadata, write_report
from .progress import progress
from .results import ResultsDir

__all__ = ["Finding", "ResultsDir", "progress", "run_metadata", "write_report"]
