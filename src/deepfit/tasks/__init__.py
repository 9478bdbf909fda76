"""Per-task loss, post-processing and metrics: never inside the model or the trainer."""
