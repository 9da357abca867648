"""Fast, honest evaluation: measured backends, exact values shared across sessions, labelled estimates."""

from pet_core.evaluation.engine import BACKENDS, Cancelled, EvalEngine, SUBSET_SIZE, shared_engine
from pet_core.evaluation.estimate import Estimate

__all__ = ["BACKENDS", "Cancelled", "Estimate", "EvalEngine", "SUBSET_SIZE", "shared_engine"]
