"""How `somnus` exits (SPEC section 4); commands pick one from what their pass returned.

Two outcomes share 1: `diff` (and `apply --dry-run`) has nothing that can fail
a step, and `apply` has no pending changes left once it ran.
"""

EXIT_OK = 0  # valid, in sync, converged, confirmed, listed
EXIT_CHANGES_PENDING = 1  # diff, apply --dry-run: the plan has changes
EXIT_STEP_FAILED = 1  # apply: a step failed (rolled back) or the apply was interrupted
EXIT_NOT_CONFIRMED = 1  # soft-reboot: not every monitored process came back in time
EXIT_INVALID_OR_ERROR = 2  # invalid input (nothing was changed), or an error such as a daemon not reachable
EXIT_INTERRUPTED = 130  # exec: Ctrl-C stopped following the command (128 + SIGINT, as a shell says)
