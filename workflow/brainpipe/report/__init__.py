"""The HTML report and its figures (see :mod:`brainpipe.report.page`)."""

from brainpipe.report.page import ReportInputs, write_report

__all__ = ["ReportInputs", "write_report"]
