"""`somnus serve [PATHS] [--listen HOST:PORT] [--tls-cert F --tls-key F] [--watch | --gitops REPO]`.

Binds 127.0.0.1:8765 by default. Another address must be named with --listen, and an
address that is not loopback is refused without TLS (a certificate and key file).
At first start it makes the login token and prints the login URL once (as Jupyter
does); afterwards it says where the token is. Uvicorn's access log stays off: it
would write the login URL, token and all. Ctrl-C stops it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import click

from somnus_reconciler.cli import arguments

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--listen", default="127.0.0.1:8765", show_default=True, help="HOST:PORT to serve on.")
@click.option("--tls-cert", type=_FILE, help="Certificate file (PEM); needed off loopback.")
@click.option("--tls-key", type=_FILE, help="Its private key (PEM).")
@click.option("--resync", default="10s", show_default=True, help="How often the page is recomputed unasked.")
@click.option("--sample-every", "sample_every", default="15s", show_default=True,
              help="How often each running VM's agent is asked for the object page's charts.")
@click.option("--watch", "follow", is_flag=True,
              help="Also run the loop of `somnus watch` (converge on every change and every --resync).")
@click.option("--gitops", "repo", help="Instead of PATHS: follow this repository as `somnus gitops` does.")
@click.option("--branch", default="main", show_default=True, help="With --gitops: the branch.")
@click.option("--path", "subpath", default=".", show_default=True, help="With --gitops: the manifests directory.")
@arguments.state_dir
def serve(paths: Sequence[Path], listen: str, tls_cert: Path | None, tls_key: Path | None, resync: str,
          sample_every: str, follow: bool, repo: str | None, branch: str, subpath: str, state_dir: str | None) -> None:
    """A web page of desired against actual, kept current live; with --watch or --gitops,
    also the loop that converges it."""
    import uvicorn

    from somnus_reconciler import settings as settings_mod
    from somnus_reconciler.passes.gitops import Checkout, GitSource
    from somnus_reconciler.providers import backends as backends_mod
    from somnus_reconciler.values.quantity import parse_duration
    from somnus_reconciler.web import app as app_mod
    from somnus_reconciler.web import security
    from somnus_reconciler.web.guest_samples import GuestSamples
    from somnus_reconciler.web.live import Dashboard
    from somnus_reconciler.web.loop_run import LoopRun

    if bool(paths) == bool(repo) or (repo and follow):
        arguments.fail("give PATHS (with --watch, if it should converge too), or --gitops REPO")
    host, port = _listen_address(listen)
    if (tls_cert is None) != (tls_key is None):
        arguments.fail("--tls-cert and --tls-key go together")
    if not _loopback(host) and tls_cert is None:
        arguments.fail(f"--listen {listen} is not a loopback address: give --tls-cert and --tls-key")
    try:
        resync_s, sample_s = parse_duration(resync), parse_duration(sample_every)
    except ValueError as e:
        arguments.fail(f"--resync or --sample-every: {e}")
    backends = backends_mod.open_backends(None, state_dir=state_dir)
    settings = settings_mod.resolve(None, state_dir=state_dir)
    token, new = security.login_token(settings.state_dir)
    scheme = "https" if tls_cert else "http"
    shown_host = f"[{host}]" if ":" in host else host
    hosts = frozenset({f"{shown_host}:{port}"} | ({f"localhost:{port}"} if _loopback(host) else set()))
    guard = security.Guard(token, hosts, tls=tls_cert is not None)
    following = None
    if repo:
        source = GitSource(repo, branch, subpath)
        dashboard = Dashboard([Checkout(source, settings.state_dir).dir / subpath], backends, resync_s=resync_s)
        following = LoopRun.following(dashboard, source, interval_s=resync_s, state_dir=settings.state_dir)
    else:
        dashboard = Dashboard(paths, backends, resync_s=resync_s)
        if follow:
            following = LoopRun.watching(dashboard, paths, interval_s=resync_s, state_dir=state_dir)
    app = app_mod.make_app(dashboard, guard, GuestSamples(dashboard, interval_s=sample_s), following)
    if new:
        click.echo(f"Log in at {scheme}://{shown_host}:{port}/login?token={token}")
    else:
        click.echo(f"Serving {scheme}://{shown_host}:{port}/ ; the login URL takes the token in "
                   f"{settings.state_dir / security.TOKEN_FILE}: /login?token=...")
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning",
                ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None)


def _listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        arguments.fail(f"--listen {listen}: expected HOST:PORT, such as 127.0.0.1:8765")
    return host, int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
