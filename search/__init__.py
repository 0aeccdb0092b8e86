"""Studies, search spaces, the objective, the trainer and the data pipeline."""
