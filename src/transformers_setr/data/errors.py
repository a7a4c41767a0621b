"""The errors of loading and reading data; each message names the file (or source) and the problem."""


class DatasetFormatError(ValueError):
    """A dataset source or file without the expected layout or content; the message names the file and the problem."""


class UndeclaredClassesError(DatasetFormatError):
    """Custom data (not ADE20K or Cityscapes by its source or layout) without a declaration of its classes."""
