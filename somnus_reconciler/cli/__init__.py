"""cli: the `somnus` command: parse arguments, call one function, pick a view.

`commands` holds the click commands and exit codes (SPEC section 4); `views`
renders plans, progress, status and events as text or JSON. Nothing imports
this layer.
"""
