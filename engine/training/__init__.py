"""Training: set-up, batch sources (images or cached features), the epoch loop and its listeners (metrics, checkpoints, resume, early stopping, integrity, telemetry), class weights, folds."""
