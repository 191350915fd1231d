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


class NoUsableImages(RunFailed):
    """No training image of an epoch could be read: files deleted, replaced or unreadable mid-run."""


# Where memory runs out, what to make smaller: per CLI command, and a general fallback.
MEMORY_ADVICE = {
    "train": "try a smaller --image-size or --batch-size",
    "training": "try a smaller image size or batch size",  # the window's words: it has no flags
    "lr-find": "try a smaller --image-size or --batch-size",
    "predict": "try fewer images at once",
    "export": "try a smaller model or another format",
    "layers": "try fewer --classes",
    "demo-data": "try a smaller --size",
}


def out_of_memory_message(exc: BaseException, command: str) -> str | None:
    """One line for an allocation that failed (host or GPU), with what to make smaller; None when
    `exc` is not about memory (then it is a bug and keeps its traceback)."""
    text = str(exc)
    is_memory = (isinstance(exc, MemoryError) or "out of memory" in text.lower()
                 or "not enough memory" in text or "DefaultCPUAllocator" in text)
    if not is_memory:
        return None
    detail = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    advice = MEMORY_ADVICE.get(command, "try smaller sizes")
    return f"out of memory in {command} ({detail[:200]}); {advice}"


class Stopped(Exception):
    """The person asked to stop; unwinds set-up or the epoch in progress."""
