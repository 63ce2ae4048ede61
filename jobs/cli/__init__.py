"""The `vaegen` command line: thin click wrappers over library functions, one module per command family
(training, models, generating, inspection, webhooks); exit codes and error handling live in jobs/cli/plumbing.py.

Each module's commands are added to the group here; `vaegen --help` lists them by name, as click sorts them.
"""

from __future__ import annotations

import click

from jobs.cli.generating import generate, refresh
from jobs.cli.inspection import datasets, inspect_command, report, status_command, tag
from jobs.cli.models import list_models, promote, rollback
from jobs.cli.plumbing import _terminate, _terminated, console
from jobs.cli.training import sample, train
from jobs.cli.webhooks import refresh_target as _refresh_target
from jobs.cli.webhooks import webhook

__all__ = ["_refresh_target", "_terminate", "_terminated", "generate_main", "main", "vaegen_main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """vaegen: train a VAE, register its decoder in MLflow, generate synthetic datasets with Ray.

    \b
    Model references (every --model and REFERENCE):
      NAME@ALIAS     vae-decoder@champion (resolved once, then pinned)
      NAME/VERSION   vae-decoder/3
      NAME/latest    the highest version of NAME
      models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/decoder

    Tracking: MLFLOW_TRACKING_URI (default: ./mlflow.db, MLflow's own default).
    Cluster: RAY_ADDRESS (default: a local Ray started by the job).
    """


for command in (
    train,
    sample,
    list_models,
    promote,
    rollback,
    generate,
    refresh,
    inspect_command,
    status_command,
    datasets,
    tag,
    report,
    webhook,
):
    main.add_command(command)  # the order does not matter: `vaegen --help` sorts them

vaegen_main = console(main)  # the `vaegen` console script
generate_main = console(generate)  # the `generate` console script: `ray job submit ... -- generate --n 1000000`
