"""Exceptions with messages a connectomics user can act on (they name the file, array and expected value)."""


class NisbflowError(Exception):
    """Base class of every error nisbflow raises on purpose; the CLI prints these without a traceback."""


class ConfigError(NisbflowError, ValueError):
    """A configuration file or ``key=value`` override is invalid."""


class VolumeError(NisbflowError, ValueError):
    """A zarr store or array is missing or has the wrong shape, rank or dtype."""


class SkeletonError(NisbflowError, ValueError):
    """A skeleton file is missing, unsafe, in an unknown format or inconsistent with its volume."""


class OutputExistsError(NisbflowError, FileExistsError):
    """An output already exists and ``overwrite`` was not requested."""
