"""engine: executes a Plan step by step: snapshot -> act -> verify -> record | rollback.

`executor` runs the changes through the provider protocols it is handed and
records each step in the journal; each try is made by `resource_step` (a VM or
container: act, verify) or `pack_step` (a pack, guarded by a snapshot from
`snapshots`), and `retry` says from its error's type whether it is tried again.
`recovery` rolls back the steps a killed process left open; `pack_runner` puts
a pack on a guest through Ansible. May import: values, planning, providers,
semantic, journal, settings.
"""
