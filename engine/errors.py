"""Errors the person can act on. Their message is one line; the CLI prints it and exits with 2."""


class UserError(Exception):
    """Bad input or an unavailable resource, explained in one line."""


class WeightsUnavailable(UserError):
    """Pretrained weights are neither cached nor downloadable."""


class UnsafeFileError(UserError):
    """A file would need arbitrary code to load, or safe loading was switched off."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""
