"""Running jobs: the training loop, distribution strategies, the command-line runner, run configs, errors."""
