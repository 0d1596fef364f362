"""values: the frozen values every layer passes around; no I/O.

The manifest kinds (`model`, `fields`; GPUs in `gpu`), quantities (`quantity`),
diagnostics with their FILE:LINE (`diagnostics`), the resolved desired state
(`desired`), the observed actual state (`actual`), conditions (`conditions`), step
outcomes (`outcome`) and the error hierarchy (`errors`). The lowest layer: imports nothing else from the package.
"""
