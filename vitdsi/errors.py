"""Error types the library raises for bad input, so callers can tell them from bugs."""


class VitDSIError(ValueError):
    """Bad input or configuration; the message names the problem and how to fix it."""


class DatasetNotFoundError(VitDSIError, FileNotFoundError):
    """A dataset's files are not where we looked; the message lists where and how to get them."""
