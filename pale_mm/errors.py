"""The one base class of the errors pale_mm's tools print as one line, without a traceback.

Every error that pale_mm raises about something the user can fix (a config key, a data file,
a checkpoint) derives from :class:`PaleError`, and its message names the problem and the fix.
``tools/train.py`` and ``tools/test.py`` catch ``PaleError`` alone.
"""


class PaleError(Exception):
    """A problem whose message says everything: what is wrong, where, and how to fix it."""

    @property
    def summary(self) -> str:
        """The message alone, also when a DataLoader worker re-raised the error (torch then
        puts the worker's traceback in front of the message)."""
        text = str(self)
        marker = f'{type(self).__name__}: '
        if 'Original Traceback' in text and marker in text:
            text = text.rsplit(marker, 1)[1]
        return text.strip()


class LaunchError(PaleError, RuntimeError):
    """A problem with the config, the data or the checkpoints, found before the run starts."""
