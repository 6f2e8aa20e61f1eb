"""Exceptions of the data package, each with a message that says what to do next."""

from __future__ import annotations

from grefel_jax.errors import UserError


class DataError(UserError):
    """Base class for data errors."""


class DatasetNotPreparedError(DataError, FileNotFoundError):
    """The dataset has not been built in `data_dir`; the message gives the command to run."""


class ManualDataMissingError(DataError, FileNotFoundError):
    """The manual directory lacks files of the official release; the message lists them."""


class CorruptImageError(DataError, ValueError):
    """An image file could not be decoded; the message names the file."""


class ManualDataFormatError(DataError, ValueError):
    """A file of a manual release does not parse (bad row, repeated key, wrong encoding);
    the message names the file, the line and what is wrong."""


class BuildError(DataError):
    """Building a dataset failed inside TFDS; the message keeps the real cause (TFDS's error
    path can otherwise end in an unrelated `No module named 'tensorflow'`)."""
