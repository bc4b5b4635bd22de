"""The comparison report of one results folder: ``report.md``, ``report.html`` and the figures.

:func:`build_report` reads the tidy tables written by the runner (see :mod:`bench.results`),
maps an older schema's column names, checks that they are this tool's tables (a foreign table is
a ValueError naming the file), splits the runs into settings (runs whose configuration differs
only by seed and strategy) and summarises every strategy label of each setting separately: final
quality in every registered metric over seeds with 95 % Student-t confidence intervals, the paired
difference to ``jfb``, the best learned strategy against the best classical baseline, quality at a
common training-time budget, cost, memory, convergence, gradient fidelity, time to a target, and
flags for runs whose numbers rest on a broken assumption or an unreliable timing. Rankings, the
budget and the target use the primary metric (PSNR unless ``metric=`` names another registered
one). The report opens with its verdict.

The package, in the order data flows through it:

- :mod:`~bench.report.model`: the data model (:class:`ReportData`), labels and colours;
- :mod:`~bench.report.load`: reading, old column names, schema checks, settings;
- :mod:`~bench.report.stats`: intervals, paired differences, the equal-time budget, flags;
- :mod:`~bench.report.tables` and :mod:`~bench.report.observe`: cells and sentences;
- :mod:`~bench.report.document`: one document model rendered to Markdown and HTML;
- :mod:`~bench.report.build`: :func:`build_report`. The figures are
  :mod:`~bench.report.figures`.

Seeds are the only thing ever pooled: runs of one strategy with different settings are reported
in separate per-setting tables; figures other than the scaling figures show the first setting.
"""

from bench.report.build import build_report
from bench.report.document import Table
from bench.report.load import check_schema, prepare, split_settings
from bench.report.model import PlotResult, ReportData

__all__ = [
    "PlotResult",
    "ReportData",
    "Table",
    "build_report",
    "check_schema",
    "prepare",
    "split_settings",
]
