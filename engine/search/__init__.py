"""Hyper-parameter search over a plan's own knobs (Optuna: TPE sampling, median pruning, a journal file
that several processes and nodes share). Each trial is an ordinary run of the trainer."""
