"""Transfer Studio's engine: data, models, the freeze/LR plan, training and checkpoints.

Pure torch + torchvision. Nothing here imports Qt (tests/test_engine_is_qt_free.py checks it),
so the same code runs in the window's worker thread, on the command line and under torchrun.
"""

__version__ = "0.1.0"
