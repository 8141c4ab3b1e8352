"""Files: checkpoints by original name, adapter directories, atomic writes."""
