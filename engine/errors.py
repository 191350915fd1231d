"""Errors the person can act on. Their message is one line; the CLI prints it and exits with 2."""


class UserError(Exception):
    """Bad input or an unavailable resource, explained in one line."""


class WeightsUnavailable(UserError):
    """Pretrained weights are neither cached nor downloadable."""


class UnsafeFileError(UserError):
    """A file would need arbitrary code to load, or safe loading was switched off."""


class RunFailed(UserError):
    """A run that started could not finish soundly; the CLI exits with 1 (not 2: the input was fine)."""


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite."""


class FrozenTensorsChanged(RunFailed):
    """A tensor the plan froze differs, bit for bit, from what was loaded."""
