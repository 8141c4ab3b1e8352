"""Files: TF1 checkpoints by original name, atomic writes, Hugging Face and AdapterHub directories, PyTorch files."""
