"""Run folders and the session around a training run."""
