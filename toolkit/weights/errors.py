"""The one error type every weight importer raises, so callers catch one thing."""


class WeightImportError(ValueError):
    """A checkpoint could not be read: the message names the file and the tensor or field."""
