"""Serving: SavedModel and TFLite exports that take raw text."""
