"""planning: pure functions from desired and actual state to a Plan.

`plan.compute` returns the plan as a value (no I/O, no clock); `admission`
checks what would run against the host's capacity, `gpus` the GPUs against the host's
devices. May import: values.
"""
