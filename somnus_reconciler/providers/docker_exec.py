"""A command run in a container through dockerd's exec API (what `docker exec` does), and its exit code.

`docker_provider.DockerProvider` delegates here on its open API client: `run` for a
command whose output is dropped (a pack's verify, a pack run's check), `stream` for
`somnus exec container/NAME -- CMD`, whose output is handed on as it comes, stdout and
stderr apart. No TTY and no stdin: the command reads end of file. Its exit code is the
one dockerd records (126 when it cannot be started, e.g. not found: the message is in
its output). Errors are mapped by `docker_errors.mapped`, naming the container.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from somnus_reconciler.providers.docker_errors import mapped
from somnus_reconciler.providers.protocols import ProviderError

if TYPE_CHECKING:
    import docker

OutputSink = Callable[[bytes], None]

# Once the output ended, dockerd records the exit code within milliseconds.
_EXIT_CODE_WAIT_S = 10.0
_EXIT_CODE_POLL_S = 0.05


def run(api: docker.APIClient, address: str, container: str, argv: Sequence[str], timeout_s: float) -> int:
    """Exit code of `argv` in the running `container`. The output is attached (and dropped)
    so that exec_start returns when the command ends; ProviderError after `timeout_s`."""
    with mapped(address, "exec"):
        exec_id = api.exec_create(container, list(argv), stdout=True, stderr=True)["Id"]
        api.exec_start(exec_id)
        return _exit_code(api, address, exec_id, argv[0], timeout_s)


def stream(api: docker.APIClient, address: str, container: str, argv: Sequence[str], *,
           on_stdout: OutputSink, on_stderr: OutputSink) -> int:
    """Run `argv` in the running `container`, handing each chunk of its stdout and stderr
    on as it arrives; its exit code once it ended."""
    with mapped(address, "exec"):
        exec_id = api.exec_create(container, list(argv), stdout=True, stderr=True, stdin=False, tty=False)["Id"]
        for stdout, stderr in api.exec_start(exec_id, stream=True, demux=True):
            if stdout:
                on_stdout(stdout)
            if stderr:
                on_stderr(stderr)
        return _exit_code(api, address, exec_id, argv[0], _EXIT_CODE_WAIT_S)


def _exit_code(api: docker.APIClient, address: str, exec_id: str, program: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while (code := api.exec_inspect(exec_id)["ExitCode"]) is None:
        if time.monotonic() > deadline:
            raise ProviderError(address, "exec", f"{program} did not finish in {timeout_s:g}s")
        time.sleep(_EXIT_CODE_POLL_S)
    return int(code)
