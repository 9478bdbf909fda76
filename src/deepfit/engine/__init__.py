"""The training engine shared by every task: device, precision, optimisation, checkpoints, callbacks."""
