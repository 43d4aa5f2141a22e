"""Apply: physical structured removal (smaller Linear modules) of a pruning plan."""

from prunelight.apply.structured import Compensation, LayerInputMeans, apply_plan

__all__ = ["Compensation", "LayerInputMeans", "apply_plan"]
