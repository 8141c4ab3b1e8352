"""Tokenizers: the original FullTokenizer and the in-graph one (tensorflow-text)."""
