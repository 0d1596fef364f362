"""passes: one reconcile pass, and the loops that repeat it.

`prepare` loads, observes, plans and refuses what must not run; `converge`
runs one pass (lock -> recover -> prepare -> execute) for apply, watch and
gitops; `loop` keeps the backends open between passes and turns them into
events (`loop_events`), triggered by `watch` (files) or `gitops` (a git repository);
`pack_health` runs the packs' verify commands at a resync; `status` gathers
what `get` and `describe` show as typed values (with `agent_health`, each
running VM's agent). One module per other command keeps the CLI free of domain
logic: `preview` (validate, diff), `apply`, `rollback` (snapshots by hand),
`soft_reboot`, `history_query`, `base_images` (image build). May import every
layer below: engine, providers, semantic, planning, manifests, images, values,
journal, settings.
"""
