"""The command line's plumbing, shared by every command: exit codes, one-line errors, SIGTERM, the way out.

Exit codes, in one place: 0 ok, 1 the job failed, 2 usage error (bad input), 3 `status`: not current,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
`refresh` exits 0 with `refresh: busy` when a live refresh holds the root's lock: that one reports.
Results go to stdout; progress and diagnostics to stderr; a traceback only with --debug.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from vae_core.errors import Terminated, VaegenError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 128 + signal.SIGTERM
EXIT_STALE = 3  # `vaegen status`: the published data is not current


def _say_error(message: str) -> None:
    from registry.redaction import redact_text  # libraries quote URIs in errors; credentials never reach the terminal

    click.echo(f"vaegen: error: {redact_text(message)}", err=True)


def _fail(message: str, code: int) -> None:
    _say_error(message)
    sys.exit(code)


def _mlflow_message(error: BaseException) -> str | None:
    """MLflow's own message if `error` is an MlflowException; mlflow is never imported just to ask."""
    exceptions = sys.modules.get("mlflow.exceptions")
    if exceptions is not None and isinstance(error, exceptions.MlflowException):
        return f"MLflow: {error.message}"
    return None


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn vaegen's and MLflow's exceptions into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from registry import tracking  # light: environment defaults only, no mlflow

        tracking.configure_environment()
        debug = (click.get_current_context().find_root().params or {}).get("debug", False)
        try:
            tracking.enter_store_folder_in_ray_job()
            return command(*args, **kwargs)
        except VaegenError as error:
            if debug:
                raise
            _fail(" ".join(str(error).split()), error.exit_code)
        except KeyboardInterrupt as error:
            if _terminated(error):
                _fail("terminated (SIGTERM); rerun the same command to resume", EXIT_TERMINATED)
            _fail("interrupted; rerun the same command to resume", EXIT_INTERRUPTED)
        except BrokenPipeError:  # `vaegen models | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_FAILED)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as error:  # MLflow's, a bug's or the environment's: one line, the traceback on --debug
            if debug:
                raise
            message = _mlflow_message(error)
            if message is None:
                message = f"{type(error).__name__}: {error} (rerun with --debug for the traceback)"
            _fail(" ".join(message.split()), EXIT_FAILED)

    return wrapper


def log(message: str) -> None:
    click.echo(message, err=True)


def stdout_for_results() -> Any:
    """Reserve stdout for this command's results, which it prints to the stream returned: for the rest of
    the process anything else written to sys.stdout goes to stderr. Ray forwards worker and raylet lines
    ("(raylet) A worker died ...") to stdout, repeated ones only when it flushes them, as late as exit."""
    results = sys.stdout
    sys.stdout = sys.stderr
    return results


def console(command: click.Command) -> Callable[[], None]:
    """A console-script entry point whose usage errors are one line too (click's are several), and which
    exits as soon as its last line is printed."""

    def run() -> None:
        code = EXIT_OK
        signal.signal(signal.SIGTERM, _terminate)
        try:
            command.main(standalone_mode=False)
        except click.UsageError as error:
            hint = f"; see `{error.ctx.command_path} --help`" if error.ctx is not None else ""
            _say_error(f"{error.format_message().rstrip('.')}{hint}")
            code = EXIT_USAGE
        except click.exceptions.Abort as error:  # Ctrl-C or SIGTERM outside a command (parsing, importing)
            terminated = _terminated(error.__cause__)
            _say_error("terminated (SIGTERM)" if terminated else "aborted")
            code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        except click.ClickException as error:
            _say_error(error.format_message())
            code = error.exit_code
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else EXIT_FAILED
        _exit(code)

    return run


_SIGTERM_RECEIVED: list[bool] = []  # set once the handler ran: Ray's blocking calls re-raise a plain KeyboardInterrupt


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, once: the way out then runs as for
    Ctrl-C (locks released, runs ended KILLED, one line, exit 143); a second SIGTERM does not cut it short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _SIGTERM_RECEIVED.append(True)
    raise Terminated()


def _terminated(error: BaseException | None) -> bool:
    """Whether an interruption came from SIGTERM: ray.wait and ray.get turn the handler's Terminated into a
    plain KeyboardInterrupt, so the handler's record counts too."""
    return isinstance(error, Terminated) or bool(_SIGTERM_RECEIVED)


def _exit(code: int) -> None:
    """Leave as soon as the last line is out. Python's own teardown of what a command imported (mlflow,
    SQLAlchemy, pyarrow, pandas) takes a second or more, and a local Ray's graceful stop several; but
    everything a command writes is written and closed before it returns. So: stop the local Ray this
    process started, end an MLflow run still open, flush, and exit."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from jobs.generate import ray_session

        ray_session.stop_local_ray()
        if ray.is_initialized():  # a cluster's driver: disconnecting sends its last metric points (jobs/metrics.py)
            ray.shutdown()
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run({EXIT_OK: "FINISHED", EXIT_INTERRUPTED: "KILLED", EXIT_TERMINATED: "KILLED"}.get(code, "FAILED"))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
