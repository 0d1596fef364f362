"""engine: executes a Plan step by step: snapshot -> act -> verify -> record | rollback.

`executor` runs the changes through the provider protocols it is handed and
records each step in the journal; `pack_runner` puts a pack on a guest through
Ansible. May import: values, planning, providers, semantic, journal, settings.
"""
