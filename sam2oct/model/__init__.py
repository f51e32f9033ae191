"""The model: network, checkpoints, the predictor and its encoder runtimes."""
