"""Insight: evaluation, Grad-CAM, the advisor, the LR range test."""
