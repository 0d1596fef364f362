"""`python -m somnus_reconciler` runs the CLI."""

from somnus_reconciler.cli import main

main()
