"""The names of a decoder layer's seven prunable projections, and the ways they split.

Every family adapter maps these short names to its own module paths (:class:`~prunelight.models.adapters.
LayerModules` has one field per name), so the rest of prunelight speaks only this vocabulary: importance,
masks, LoRA targets, semi-structured export and the reports all iterate over the same tuples, defined once
here, in the order the reports print them.
"""

from __future__ import annotations

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
"""Every prunable linear map of a decoder layer, attention first."""

ROW_PROJECTIONS = ("q", "k", "v", "gate", "up")
"""Projections whose output *rows* belong to a group (a key/value head's rows, an MLP channel's row):
removing the group drops rows, and a group's score sums over rows."""
COLUMN_PROJECTIONS = ("o", "down")
"""Projections whose input *columns* belong to a group: they read what the row projections wrote, so the
same group removes their columns."""

ATTENTION_PROJECTIONS = ("q", "k", "v", "o")
"""The projections one attention group (a key/value head and its query heads) spans."""
MLP_PROJECTIONS = ("gate", "up", "down")
"""The projections one MLP channel spans."""

INPUT_OF = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate", "down": "down"}
"""Projections that read the same tensor share one input statistic: q/k/v read the attention input, gate/up
the MLP input, o and down their own. Maps each projection to the one whose input hook holds it."""

KIND_PROJECTIONS = {"attention": ATTENTION_PROJECTIONS, "mlp": MLP_PROJECTIONS}
"""The projections of each kind of structured group, keyed as the group tables are (attention, mlp)."""
