"""Options for every test session, unit and integration.

`--under-load` (or `SOMNUS_TEST_LOAD=1`): the session runs with every core kept busy
by stress-ng (testkit/machine_load.py), started before the first test and stopped,
by its pid, after the last; both are printed. The suite must pass so (issue 18): a
test lines itself up with the product by what it says, never by how fast it is.
"""

from __future__ import annotations

import os

import pytest

from testkit import machine_load

_LOAD = pytest.StashKey[machine_load.MachineLoad]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--under-load", action="store_true", default=False,
                     help="keep every core busy with stress-ng for the whole session (as SOMNUS_TEST_LOAD=1)")


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    else:
        print(line, flush=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if not (config.getoption("--under-load") or os.environ.get("SOMNUS_TEST_LOAD") == "1"):
        return
    load = machine_load.start()
    config.stash[_LOAD] = load
    _say(config, f"under load: started `{load.command}` (pid {load.proc.pid}, {load.workers} busy workers)")


def pytest_sessionfinish(session: pytest.Session) -> None:
    load = session.config.stash.get(_LOAD, None)
    if load is not None:
        ran_s = load.stop()
        # "\n": the progress line ("... [100%]") is not ended yet when the session finishes.
        _say(session.config, f"\nunder load: stopped stress-ng (pid {load.proc.pid}) after {ran_s:.0f} s, "
                             f"exit code {load.proc.returncode}")
