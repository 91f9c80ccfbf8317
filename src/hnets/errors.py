"""The one exception type the command line turns into a single clear line.

Library code raises :class:`HNetsError` (or a subclass) for every problem caused by
the user's input or environment: a missing file, a corrupt archive, a wrong shape.
The CLI prints ``hnets: error: <message>`` and exits non-zero; ``--debug`` shows
the traceback. Programming errors keep their ordinary exception types.
"""

from __future__ import annotations

__all__ = ["HNetsError", "DataError", "CheckpointError"]


class HNetsError(Exception):
    """A problem with the user's input or environment, described in one line."""


class DataError(HNetsError):
    """A data file is missing, corrupt, or not in the expected format."""


class CheckpointError(HNetsError):
    """A checkpoint directory is missing files, corrupt, or belongs to another model."""
