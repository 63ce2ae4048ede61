"""`python -m jobs.cli`: the `vaegen` group, as before the CLI became a package (tests/test_hostile_versions.py)."""

from jobs.cli import main

main()
