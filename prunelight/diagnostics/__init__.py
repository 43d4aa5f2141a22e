"""Diagnostics (docs/design.md: Diagnostics): the analysis of a run, as JSON in its ``analysis/`` folder.

Gradient statistics (:mod:`~prunelight.diagnostics.statistics`), the per-layer report
(:mod:`~prunelight.diagnostics.layers`), the diagnosis (:mod:`~prunelight.diagnostics.diagnosis`) and the
JSON Schemas they are validated against (:mod:`~prunelight.diagnostics.schema`). The files a person opens
(summary, plots, TensorBoard) are rendered from that JSON by :mod:`prunelight.reports`.
"""
