"""Data: scan a dataset folder, split it, decode images robustly, transforms, loaders, the decoded-image cache, demo data."""
