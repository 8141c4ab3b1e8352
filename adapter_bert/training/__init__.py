"""Running jobs: the training loop, distribution strategies, the runners behind the command lines, run configs."""
