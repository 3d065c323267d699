"""Model-size comparison reports of a sweep: offline HTML with PNGs, or a W&B Report.

    from toolkit.report import make_report
    make_report("runs/quickstart")            # -> runs/quickstart/report/report.html
"""

from toolkit.report.collect import ReportError
from toolkit.report.make import make_report

__all__ = ["ReportError", "make_report"]
