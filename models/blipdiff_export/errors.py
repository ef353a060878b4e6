"""Errors the exporter raises for bad checkpoints and unsupported configurations."""


class ExportError(Exception):
    """A checkpoint cannot be exported; the message names the problem and, where possible, the fix."""
