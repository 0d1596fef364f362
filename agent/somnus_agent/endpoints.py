"""What each HTTP endpoint does, as plain functions of (runtime, body).

:mod:`somnus_agent.server` authenticates, parses JSON and then dispatches
through :data:`ROUTES`; nothing here touches sockets.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

from somnus_agent import __version__, auth, config, executor, files, logscan, stats
from somnus_agent.runtime import AgentRuntime

DEFAULT_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    payload: dict[str, Any]


def error(status: int, message: str, **extra: Any) -> Response:
    return Response(status, {"error": message, **extra})


def get_status(rt: AgentRuntime, body: dict[str, Any]) -> Response:
    return Response(200, {"ok": True, "version": __version__, "processes": rt.supervisor.status()})


def get_stats_basic(rt: AgentRuntime, body: dict[str, Any]) -> Response:
    return Response(200, stats.basic())


def get_stats_intelligent(rt: AgentRuntime, body: dict[str, Any]) -> Response:
    return Response(200, logscan.recent_errors(rt.config.watch_logs))


def post_execute(rt: AgentRuntime, body: dict[str, Any]) -> Response:
    argv = body.get("argv")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        return error(400, "argv must be a non-empty list of strings")
    stdin = body.get("stdin", "")
    if not isinstance(stdin, str):
        return error(400, "stdin must be a string")
    timeout_s = body.get("timeout_s", DEFAULT_TIMEOUT_S)
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not math.isfinite(timeout_s)
        or not 0 < timeout_s <= executor.MAX_TIMEOUT_S
    ):
        return error(400, f"timeout_s must be a number in (0, {executor.MAX_TIMEOUT_S:g}]")
    started = time.monotonic()
    try:
        result = executor.run(argv, stdin, float(timeout_s))
    except OSError as e:
        # Only argv[0] is logged: arguments, stdin and the token may hold secrets.
        rt.exec_log.info("execute argv0=%r failed to start duration_s=%.3f",
                         argv[0], time.monotonic() - started)
        return error(400, f"cannot start {argv[0]!r}: {e.strerror or e}")
    rt.exec_log.info("execute argv0=%r exit_code=%s duration_s=%.3f timed_out=%s",
                     argv[0], result.exit_code, result.duration_s, result.timed_out)
    return Response(200, dataclasses.asdict(result))


def post_soft_reboot(rt: AgentRuntime, body: dict[str, Any]) -> Response:
    outcome = rt.supervisor.restart_all()
    if not outcome.ok:
        return error(
            504,
            "monitored processes did not all come back",
            stop_timed_out=list(outcome.stop_timed_out),
            not_running=list(outcome.not_running),
            processes=rt.supervisor.status(),
        )
    return Response(200, {"ok": True, "processes": rt.supervisor.status()})


def post_config_reload(rt: AgentRuntime, body: dict[str, Any]) -> Response:
    try:
        rt.reload()
    except (config.ConfigError, auth.TokenFileError) as e:
        return error(500, f"reload failed, previous configuration kept: {e}")
    return Response(200, {"ok": True, "processes": rt.supervisor.status(),
                          "watch_logs": [str(p) for p in rt.config.watch_logs]})


def post_files(rt: AgentRuntime, body: dict[str, Any]) -> Response:
    try:
        result = files.apply(body)
    except files.FileError as e:
        rt.exec_log.info("files failed")  # the message names a path: kept out of the log
        return error(422, str(e))
    rt.exec_log.info("files written=%d removed=%d", len(result["written"]), len(result["removed"]))
    return Response(200, result)


Endpoint = Callable[[AgentRuntime, dict[str, Any]], Response]

ROUTES: dict[str, dict[str, Endpoint]] = {
    "/status": {"GET": get_status},
    "/stats/basic": {"GET": get_stats_basic},
    "/stats/intelligent": {"GET": get_stats_intelligent},
    "/execute": {"POST": post_execute},
    "/files": {"POST": post_files},
    "/soft-reboot": {"POST": post_soft_reboot},
    "/config/reload": {"POST": post_config_reload},
}
