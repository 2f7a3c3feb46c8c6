"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class FlywheelError(Exception):
    """A problem the user can fix (bad input file, corrupted artifact, failed check).

    The message names what is wrong and where; the CLI prints it without a traceback.
    """
