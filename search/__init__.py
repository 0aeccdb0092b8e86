"""Studies, search spaces, the objective, the trainer and the data pipeline."""

from search.export import load_best_model

__all__ = ["load_best_model"]
