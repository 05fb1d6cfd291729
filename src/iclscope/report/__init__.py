"""Figures and self-contained HTML reports for results folders."""

from .html import write_report
from .results import ResultsDir

__all__ = ["write_report", "ResultsDir"]
