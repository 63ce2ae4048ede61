"""The kinds of failure vaegen reports, and their exit codes (0 ok, 1 failed job, 2 usage error)."""


class VaegenError(Exception):
    """A job failed for a reason outside the user's input (server down, disk full, NaN decoder)."""

    exit_code = 1


class UsageError(VaegenError):
    """The user's input is wrong; the message names the value and the fix."""

    exit_code = 2


class BrokenVersion(VaegenError):
    """A model version that fails the same way every time it is loaded or run: retrying or resuming cannot help."""


class NonFiniteOutput(BrokenVersion):
    """The decoder produced NaN or inf: a broken version, not a transient failure."""


class IncompatibleWeights(BrokenVersion):
    """A version whose weights do not fit the network its config describes (hand-edited or mixed-up files)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (Kubernetes stopping a pod, `ray job stop`, a scheduler's timeout): handled as Ctrl-C is,
    so every lock is released and every run is ended on the way out, then exit 143."""
