"""The one exception type the command line turns into a one-line message."""


class MrnnError(Exception):
    """A problem with the user's input (file, config, checkpoint) that a user can fix.

    The command line prints ``mrnn: error: <message>`` and exits with status 2, without a
    traceback. Messages name the file (and line, where there is one) and say what to do.
    """


class WriteFailed(MrnnError):
    """A write that failed part-way (a full disk, no permission): nothing half-written is
    kept, but the writer's worker threads (orbax, tensorstore) are left behind and print
    tracebacks while Python shuts down, so the ``mrnn`` program ends at once after its line."""
