"""The agent's live state: token, configuration, supervisor and execute log.

Built once by :mod:`somnus_agent.cli`; the endpoint functions in
:mod:`somnus_agent.endpoints` read and change it.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import threading

from somnus_agent import auth, config, supervisor

EXEC_LOG_NAME = "somnus-agent.log"


def _exec_logger(path: pathlib.Path | None) -> logging.Logger:
    """The log of every ``/execute`` in ``path``, or on stderr when there is none."""
    logger = logging.getLogger("somnus_agent.execute")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler: logging.Handler
    if path is not None:
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    return logger


class AgentRuntime:
    """Everything a request may need; reload swaps token and config together."""

    def __init__(self, token_path: pathlib.Path, config_path: pathlib.Path | None,
                 exec_log_path: pathlib.Path | None = None) -> None:
        self.tokens = auth.TokenStore(token_path)
        self.config_path = config_path
        self.config = config.load(config_path)
        self.supervisor = supervisor.ProcessSupervisor()
        if exec_log_path is None and config_path is not None:
            exec_log_path = config_path.parent / EXEC_LOG_NAME
        self.exec_log = _exec_logger(exec_log_path)
        self._reload_lock = threading.Lock()

    def start(self) -> None:
        self.supervisor.apply(self.config.processes)

    def reload(self) -> None:
        """Re-read config and token; if either is bad nothing changes."""
        with self._reload_lock:
            new_config = config.load(self.config_path)
            auth.read_token(self.tokens_path)  # validate before touching anything
            self.tokens.reload()
            self.config = new_config
            self.supervisor.apply(new_config.processes)

    @property
    def tokens_path(self) -> pathlib.Path:
        return self.tokens.path

    def shutdown(self) -> None:
        self.supervisor.stop_all()
