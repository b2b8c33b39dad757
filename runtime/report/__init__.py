"""A self-contained HTML report of a scored file: choose a filtering threshold by looking at pairs.

Imports no model code (no ONNX Runtime): ``longclip-report`` runs wherever the scored file and its images are.
"""

from .data import ReportData, ReportOptions, collect
from .page import check_report_path, render, write_report

__all__ = ["ReportData", "ReportOptions", "check_report_path", "collect", "render", "write_report"]
