"""Command line: ``python3 -m somnus_agent --listen HOST:PORT --token-file FILE --tls-cert PEM --tls-key PEM``.

Parses arguments, builds the runtime (refusing to start on a bad token file or
config), starts the monitored processes and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import pathlib
import signal
import ssl
import sys
import types

from somnus_agent import auth, config, server
from somnus_agent.runtime import AgentRuntime


def _listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="somnus_agent", description="Somnus in-guest agent")
    parser.add_argument("--listen", required=True, type=_listen_address, metavar="HOST:PORT")
    parser.add_argument("--token-file", required=True, type=pathlib.Path)
    parser.add_argument("--tls-cert", required=True, type=pathlib.Path,
                        help="this VM's certificate (PEM), the one the host pins")
    parser.add_argument("--tls-key", required=True, type=pathlib.Path, help="its private key (PEM)")
    parser.add_argument("--config", type=pathlib.Path, default=None)
    parser.add_argument("--exec-log", type=pathlib.Path, default=None,
                        help="log of every /execute (default: somnus-agent.log next to --config, else stderr)")
    return parser


def _raise_exit(signum: int, frame: types.FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runtime = AgentRuntime(args.token_file, args.config, args.exec_log)
    except (auth.TokenFileError, config.ConfigError) as e:
        print(f"somnus_agent: refusing to start: {e}", file=sys.stderr)
        return 2
    try:
        tls = server.tls_context(str(args.tls_cert), str(args.tls_key))
    except (OSError, ssl.SSLError) as e:
        print(f"somnus_agent: refusing to start: TLS certificate or key unusable: {e}", file=sys.stderr)
        return 2
    host, port = args.listen
    try:
        httpd = server.make_server(host, port, runtime, tls)
    except OSError as e:
        print(f"somnus_agent: cannot listen on {host}:{port}: {e.strerror}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_exit)
    runtime.start()
    print(f"somnus_agent: listening on {host}:{httpd.server_address[1]}", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        runtime.shutdown()
    return 0
