"""web: `somnus serve`, a page and a small JSON API over the state the CLI reads.

`app` builds the Starlette application (routes, templates, the live event stream);
`security` is who may use it (login token, session cookie, CSRF, Host check,
headers); `overview` computes what the overview and plan pages show, desired against
actual, from `passes`; `live` keeps it current (the manifests watched, a periodic
resync) and tells the open pages; `object_page` adds an object's snapshots, events
and rollback; `apply_run` applies the plan from its page, publishing each step;
`history_page` filters or searches the journal; `loop_run` is `serve --watch`'s loop. The layer under `cli`, and only `cli.serve_command` imports
it. May import passes and every layer below.
"""
