"""Deployment: export formats with the parity gate, prediction, the trust registry."""
