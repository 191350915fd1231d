"""Transfer Studio's entry points and wiring: the window, the training worker thread, the CLI."""
