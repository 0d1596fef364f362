"""cli: the `somnus` command: parse arguments, call one function, pick a view.

`commands` holds the click group and most commands (`guest_commands` those on
one guest by hand), `arguments` what they share, `exit_codes` SPEC section 4's
exit codes. Views render typed values as text or JSON, one module per subject
(`plan_view`, `apply_view`, `status_view`, ...), on the base in `views`. Nothing
imports this layer.
"""
