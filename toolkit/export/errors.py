"""The one error type of exports, so the CLI can print it and exit 2 instead of a traceback."""


class ExportError(ValueError):
    """An export that cannot be made; the message names the path or field and the fix."""
