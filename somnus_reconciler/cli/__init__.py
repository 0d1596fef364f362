"""cli: the `somnus` command: parse arguments, call one function, pick a view.

`commands` holds the click group and most commands; `guest_commands` those on
one guest by hand (snapshots, rollback, soft-reboot) and `loop_commands` the
long-running ones (watch, gitops); `arguments` is what they share and
`exit_codes` SPEC section 4's exit codes. Views render typed values as text or
JSON, one module per subject (`plan_view`, `apply_view`, `status_view`,
`describe_view`, `guest_view`, `history_view`, `triage_view`, `image_view`,
`validate_view`, `loop_views`), on the base in `views`. May import every layer
below; nothing imports this layer.
"""

import sys


def main() -> None:
    """The `somnus` entry point. A `diff` or an `apply` starts listing the containers
    first, even before click is imported (`providers.docker_listing`)."""
    if sys.argv[1:2] in (["diff"], ["apply"]):
        from somnus_reconciler.providers import docker_listing

        docker_listing.start_first()
    from somnus_reconciler.cli.commands import cli

    cli()
