"""Models: architectures and their weights, checkpoints and safe loading, trunk features, AdaBN, the linear probe, devices and precision."""
