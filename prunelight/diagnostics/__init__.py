"""Diagnostics (DESIGN: Diagnostics): gradient statistics, the diagnosis, plots, TensorBoard and reports.

Each module has one job; they meet in :mod:`prunelight.diagnostics.report`, which turns a run's
``analysis/`` JSON into every file a person opens.
"""
