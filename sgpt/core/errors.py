"""User-facing errors: each carries one line that names what is wrong."""


def first_line(e: BaseException) -> str:
    """An exception's message as one line (its first), for the reasons our errors give."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class SgptError(Exception):
    """An error the tools report as one line on stderr, never as a traceback."""


class RecordError(SgptError):
    """A bad input record. ``where`` names it: a record id, or ``file:line``."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class AudioError(SgptError):
    """Audio that cannot be read or used (missing, corrupt, empty, too short, NaN)."""


class CheckpointError(SgptError):
    """A model, k-means or vocoder file that cannot be loaded as the layout it claims."""
