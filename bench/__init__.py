"""implicit-bench: a benchmark harness for training implicit (deep equilibrium) networks.

Data flows top-down: config -> problem -> model -> strategy -> measurement -> tables -> report.
"""

__version__ = "0.1.0"
