"""Reports: every file a person opens after a run, rendered from the run folder's ``analysis/`` JSON.

Rendering only: the analysis itself (gradient statistics, the per-layer report, the diagnosis, the
schemas) is :mod:`prunelight.diagnostics`, which this package reads and never the other way round.
Because everything here is drawn from files already on disk, ``prunelight report`` rebuilds a finished
run's files exactly as the run wrote them.

- :mod:`~prunelight.reports.write`: the entry points :func:`write_diagnostics` (= :func:`rebuild`) and
  :func:`compare`;
- :mod:`~prunelight.reports.summary`: a prune run's ``summary.md``;
- :mod:`~prunelight.reports.sparse`: a sparse run's plot, TensorBoard curves and ``summary.md``;
- :mod:`~prunelight.reports.recovery`: the fine-tuning and pipeline tables, and a ``finetune`` run's
  ``summary.md``;
- :mod:`~prunelight.reports.plots`: the PNG figures;
- :mod:`~prunelight.reports.tensorboard`: the TensorBoard events under ``tb/diagnostics/``.
"""

from prunelight.reports.write import compare, rebuild, write_diagnostics

__all__ = ["compare", "rebuild", "write_diagnostics"]
