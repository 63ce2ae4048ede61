"""The kinds of failure vaegen reports, and their exit codes (0 ok, 1 failed job, 2 usage error)."""


class VaegenError(Exception):
    """A job failed for a reason outside the user's input (server down, disk full, NaN decoder)."""

    exit_code = 1


class UsageError(VaegenError):
    """The user's input is wrong; the message names the value and the fix."""

    exit_code = 2


class NonFiniteOutput(VaegenError):
    """The decoder produced NaN or inf: a broken version, not a transient failure."""
