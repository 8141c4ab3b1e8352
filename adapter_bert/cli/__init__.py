"""The command lines: run_classifier.py (GLUE, CSV/JSONL) and run_ner.py (CoNLL), and their shared entry."""
