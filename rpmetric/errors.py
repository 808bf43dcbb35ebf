"""Exceptions that rpmetric raises on purpose, so callers can catch them by name."""


class ModelNotAvailableError(FileNotFoundError):
    """A model's weights are neither cached nor reachable; the message says the ways out."""


class CheckpointError(ValueError):
    """A checkpoint's files do not match the architecture its config describes."""


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed; the message names the pip extra."""


class WorkerDiedError(RuntimeError):
    """A DataLoader worker decoding images died (killed, out of memory); the message says what was kept."""
