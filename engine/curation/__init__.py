"""Curation: suspect labels and journaled relabel/exclude with undo."""
