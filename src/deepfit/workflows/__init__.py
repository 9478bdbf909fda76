"""What a user runs: train (scratch or fine-tune), evaluate, predict, quickstart."""
