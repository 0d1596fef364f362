"""Capability packs installed in a guest with Ansible, through ansible-runner.

The engine calls `run_pack` for one pack on one guest (a VM over SSH on a
127.0.0.1 port forward, or a container through `docker exec`). Every run executes the generic
`playbooks/pack.yml` with extra vars (packages for the guest's family, the
pack's own playbook, its verify commands); `render_tasks` lists the tasks that
run would execute, without a guest.

This is the only module that imports `ansible_runner`. What a guest does wrong
(a failed task, an unreachable host, a timeout) comes back as a
`PackRunResult`; what the caller or the host does wrong (an unknown family, a
missing playbook, no `ansible-playbook`) raises `ProviderError`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from somnus_reconciler.manifests.pack_files import PLAYBOOKS_DIR, pack_playbook_path
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.desired import DesiredPack

PACK_PLAYBOOK = PLAYBOOKS_DIR / "pack.yml"

OS_FAMILIES = ("debian", "windows", "macos")
ACTIONS = ("install", "uninstall")
GUEST_GROUP = "guest"
SSH_COMMON_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
MESSAGE_LIMIT = 2000

# Result keys worth showing from a failed task, most telling first.
_RESULT_KEYS = ("msg", "stderr", "stdout", "module_stderr", "module_stdout", "exception")
_NOISE = frozenset({"(traceback unavailable)"})
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)
_CONTAINER_GONE = re.compile(r"Error response from daemon: (No such container|Container \S+ is not running)")
_BEARER = re.compile(r"(?i)(authorization:\s*bearer\s+)\S+")


@dataclass(frozen=True)
class SshTarget:
    """A VM reached over SSH on a loopback port forward (never a bridge address)."""

    host: str
    port: int
    user: str
    private_key: Path


@dataclass(frozen=True)
class DockerTarget:
    """A container reached through `docker exec` (it may have no network at all)."""

    container: str


Target = SshTarget | DockerTarget


@dataclass(frozen=True)
class PackRunResult:
    ok: bool
    failed_task: str | None  # the failed task's name, "unreachable" or "timeout"
    message: str  # excerpt of the failure output, at most MESSAGE_LIMIT characters
    duration_s: float
    changed: int  # tasks that reported a change


def extra_vars(pack: DesiredPack, os_family: str, action: str) -> dict[str, Any]:
    """The extra vars that drive playbooks/pack.yml for this pack."""
    _check_call(pack, os_family, action)
    own = pack_playbook_path(pack) if action == "install" else None
    if own is not None and not own.is_file():
        raise ProviderError(f"pack/{pack.name}", action, f"its playbook {own} does not exist")
    packages = {"debian": pack.spec.packages.apt, "windows": pack.spec.packages.winget,
                "macos": pack.spec.packages.brew}[os_family]
    return {
        "pack_name": pack.name,
        "pack_action": action,
        "os_family": os_family,
        "pack_packages": list(packages),
        "pack_playbook": str(own) if own is not None else "",
        "pack_verify": list(pack.spec.verify) if action == "install" else [],
    }


def render_tasks(pack: DesiredPack, os_family: str, action: str = "install") -> list[str]:
    """Names of the tasks a run would execute, in order (`ansible-playbook --list-tasks`).

    Task names of the generic playbook start with the tool they use
    (`apt:`, `winget:`, `brew:`, `verify:`). Needs no guest.
    """
    variables = extra_vars(pack, os_family, action)
    with tempfile.TemporaryDirectory(prefix="somnus-list-") as scratch:
        env = dict(os.environ, **_ansible_env(Path(scratch)))
        result = subprocess.run(
            [_ansible_playbook(pack), "--list-tasks", "-i", f"{GUEST_GROUP}-host,",
             "-e", json.dumps(variables), str(PACK_PLAYBOOK)],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )
    if result.returncode != 0:
        raise ProviderError(f"pack/{pack.name}", "list tasks",
                            _excerpt_text(result.stderr or result.stdout))
    return _parse_task_list(result.stdout)


def _parse_task_list(listing: str) -> list[str]:
    tasks: list[str] = []
    in_tasks = False
    for line in listing.splitlines():
        stripped = line.strip()
        if stripped == "tasks:":
            in_tasks = True
        elif stripped.startswith("play #") or not stripped:
            in_tasks = False
        elif in_tasks:
            tasks.append(stripped.split("\tTAGS:")[0].strip())
    return tasks


def run_pack(
    target: Target,
    pack: DesiredPack,
    *,
    os_family: str,
    action: str = "install",
    work_dir: Path,
    timeout_s: float = 1800,
    on_event: Callable[[str], None] = lambda line: None,
    cancel: Callable[[], bool] = lambda: False,
) -> PackRunResult:
    """Install (or uninstall) one pack on one guest; blocks until done or `timeout_s`.

    `on_event` receives a short line per play and task result. The private data
    directory (inventory, artifacts, Ansible's local temp) lives under
    `work_dir` while the run lasts and is removed afterwards; an SSH key is
    only referenced by its path.
    """
    variables = extra_vars(pack, os_family, action)
    binary = _ansible_playbook(pack)
    inventory = _inventory(target, os_family, pack)
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"pack-{pack.name}-", dir=work_dir))  # mode 0700
    events = _EventLog(on_event)
    started = time.monotonic()
    import ansible_runner  # here, not at the top: every `somnus diff` imports this module

    try:
        inventory_file = data_dir / "inventory.json"
        inventory_file.write_text(json.dumps(inventory))
        runner = ansible_runner.run(
            private_data_dir=str(data_dir),
            ident="run",
            playbook=str(PACK_PLAYBOOK),
            inventory=str(inventory_file),
            extravars=variables,
            envvars={
                **_ansible_env(data_dir, control_dir=(
                    _control_path_dir(work_dir) if isinstance(target, SshTarget) else None)),
                # ansible-runner finds ansible-playbook on PATH (`binary=` would drop the playbook).
                "PATH": os.pathsep.join([str(Path(binary).parent), os.environ.get("PATH", os.defpath)]),
            },
            quiet=True,
            suppress_env_files=True,
            event_handler=events.handle,
            # Given, so that ansible-runner does not install its own SIGINT/SIGTERM
            # handlers over the caller's (the watch loop's stop, apply's).
            cancel_callback=cancel,
            timeout=max(1, math.ceil(timeout_s)),
        )
        status = str(runner.status)
        stdout_tail = _read_tail(Path(runner.config.artifact_dir) / "stdout")
    except Exception as e:  # noqa: BLE001 - ansible-runner raises its own and OS errors alike
        raise ProviderError(f"pack/{pack.name}", f"{action} on {_describe(target)}",
                            f"ansible-runner could not run: {e}") from e
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return events.result(status, stdout_tail, time.monotonic() - started, timeout_s)


def end_interrupted_runs(work_dir: Path) -> list[str]:
    """End the playbooks a killed process left running in `work_dir`, and remove their data.

    ansible-runner starts ansible-playbook in a session of its own (on a pty, SIGHUP
    ignored), so a SIGKILL of the apply does not reach it: it would go on changing
    the guest while the next apply rolls the step back. Such a playbook is found by
    its command line, which names its data directory under `work_dir`; its process
    group (Ansible's workers and their `docker exec` or ssh children) is killed
    whole. Call it only under the apply lock: no run of this state directory is live
    then. Returns what was ended.
    """
    leftovers = sorted(work_dir.glob("pack-*"))
    if not leftovers:  # every finished run removes its directory: nothing can be left running
        return []
    prefix = str(work_dir) + os.sep
    found = {proc.pid: proc for proc in psutil.process_iter(["cmdline"])
             if any(arg.startswith(prefix) for arg in proc.info["cmdline"] or ())}
    ended: list[psutil.Process] = []
    for pid, proc in found.items():
        try:
            group = os.getpgid(pid)
            if group == pid:  # a playbook's leader: its group goes with it
                os.killpg(group, signal.SIGKILL)
            elif group not in found:  # never a group that is not the run's own
                proc.kill()
            else:
                continue  # a worker: ended with its leader's group
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
        ended.append(proc)
    psutil.wait_procs(ended, timeout=10)
    for data_dir in leftovers:
        shutil.rmtree(data_dir, ignore_errors=True)
    return [f"ended pid {proc.pid}: a playbook left running by an interrupted pack step" for proc in ended]


def _check_call(pack: DesiredPack, os_family: str, action: str) -> None:
    if os_family not in OS_FAMILIES:
        raise ProviderError(f"pack/{pack.name}", action,
                            f"unknown OS family {os_family!r}; expected one of {', '.join(OS_FAMILIES)}")
    if action not in ACTIONS:
        raise ProviderError(f"pack/{pack.name}", action,
                            f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")


def _ansible_playbook(pack: DesiredPack) -> str:
    """`ansible-playbook` of this Python environment first: a venv need not be on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.is_file():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise ProviderError(f"pack/{pack.name}", "run ansible",
                            "ansible-playbook is not installed (pip install 'ansible>=9')")
    return found


def _inventory(target: Target, os_family: str, pack: DesiredPack) -> dict[str, Any]:
    """One host in the group `guest`, with everything needed to reach it."""
    hostvars: dict[str, Any]
    if isinstance(target, SshTarget):
        if not _is_loopback(target.host):
            raise ProviderError(f"pack/{pack.name}", "reach the guest",
                                f"{target.host} is not a loopback address; VMs are reached "
                                "only through port forwards on 127.0.0.1")
        name = f"vm-{target.host}-{target.port}"
        hostvars = {
            "ansible_host": target.host,
            "ansible_port": target.port,
            "ansible_user": target.user,
            "ansible_ssh_private_key_file": str(target.private_key),
            "ansible_ssh_common_args": SSH_COMMON_ARGS,
        }
        if os_family == "windows":
            hostvars["ansible_shell_type"] = "powershell"
        elif os_family == "macos":
            # Homebrew refuses root: run as the SSH user itself.
            hostvars["ansible_python_interpreter"] = "auto_silent"
        else:
            hostvars["ansible_python_interpreter"] = "/usr/bin/python3"
            hostvars["ansible_become"] = target.user != "root"
    else:
        if os_family != "debian":
            raise ProviderError(f"pack/{pack.name}", "reach the guest",
                                f"containers are Debian guests; os family {os_family!r} needs a VM")
        name = target.container
        hostvars = {
            "ansible_connection": "community.docker.docker",
            "ansible_host": target.container,
            # docker exec as root: no sudo needed (and images often lack it).
            "ansible_user": "root",
            "ansible_become": False,
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        docker_host = os.environ.get("DOCKER_HOST")
        if docker_host:
            hostvars["ansible_docker_extra_args"] = f"--host {docker_host}"
    return {GUEST_GROUP: {"hosts": {name: hostvars}}}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(target: Target) -> str:
    if isinstance(target, SshTarget):
        return f"ssh {target.user}@{target.host}:{target.port}"
    return f"container {target.container}"


def _control_path_dir(work_dir: Path) -> Path:
    # SSH control sockets must fit a unix socket path (108 bytes) with a
    # 40-character hash; a long work_dir falls back to a short private path.
    candidate = work_dir / "ssh-cp"
    if len(str(candidate)) > 60:
        candidate = Path(tempfile.gettempdir()) / f"somnus-ssh-cp-{os.getuid()}"
    candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
    return candidate


def _ansible_env(data_dir: Path, *, control_dir: Path | None = None) -> dict[str, str]:
    """Settings that make a run independent of the user's Ansible configuration.

    Writes an empty `data_dir/ansible.cfg` and names it in ANSIBLE_CONFIG, so neither ./ansible.cfg nor
    ~/.ansible.cfg applies; collections come from the `ansible` package only.
    Facts are gathered only by plays that ask for them (`gather_facts: true`).
    """
    env = {
        "ANSIBLE_CONFIG": str(data_dir / "ansible.cfg"),
        "ANSIBLE_HOME": str(data_dir / "home"),
        "ANSIBLE_LOCAL_TEMP": str(data_dir / "tmp"),
        "ANSIBLE_COLLECTIONS_PATH": str(data_dir / "collections"),
        "ANSIBLE_ROLES_PATH": str(data_dir / "roles"),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "True",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_TIMEOUT": "30",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
    }
    if control_dir is not None:
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(control_dir)
    if not (data_dir / "ansible.cfg").exists():
        (data_dir / "ansible.cfg").write_text("[defaults]\n")
    return env


@dataclass
class _Failure:
    task: str
    message: str


@dataclass
class _EventLog:
    """Collects what a run reports: human lines, the first failure, the change count."""

    on_event: Callable[[str], None]
    failure: _Failure | None = None
    changed_tasks: int = 0
    stats_changed: int | None = None
    last_task: str | None = None

    def handle(self, event: Mapping[str, Any]) -> bool:
        kind = str(event.get("event", ""))
        data: Mapping[str, Any] = event.get("event_data") or {}
        task = str(data.get("task") or "").strip()
        res: Mapping[str, Any] = data.get("res") or {}
        if kind == "playbook_on_play_start":
            self._emit(f"PLAY {data.get('play', '')}")
        elif kind == "playbook_on_task_start":
            self.last_task = task
        elif kind == "runner_on_ok":
            changed = bool(res.get("changed"))
            self.changed_tasks += changed
            self._emit(f"TASK {task} ... {'changed' if changed else 'ok'}")
        elif kind == "runner_on_skipped":
            self._emit(f"TASK {task} ... skipped")
        elif kind == "runner_on_failed" and _container_gone(res):
            message = _result_excerpt(res)
            self._emit(f"TASK {task} ... unreachable: {_first_line(message)}")
            if self.failure is None:
                self.failure = _Failure("unreachable", message)
        elif kind == "runner_on_failed":
            if data.get("ignore_errors"):
                self._emit(f"TASK {task} ... failed (ignored)")
            else:
                message = _result_excerpt(res)
                self._emit(f"TASK {task} ... failed: {_first_line(message)}")
                if self.failure is None:
                    self.failure = _Failure(task, message)
        elif kind == "runner_on_unreachable":
            message = _result_excerpt(res)
            self._emit(f"TASK {task} ... unreachable: {_first_line(message)}")
            if self.failure is None:
                self.failure = _Failure("unreachable", message)
        elif kind == "playbook_on_stats":
            counts = data.get("changed") or {}
            self.stats_changed = sum(int(v) for v in counts.values())
        return True  # keep the event: runner writes it under the (temporary) artifacts

    def _emit(self, line: str) -> None:
        self.on_event(line)

    def result(self, status: str, stdout_tail: str, duration_s: float, timeout_s: float) -> PackRunResult:
        changed = self.stats_changed if self.stats_changed is not None else self.changed_tasks
        if status == "timeout":
            where = f" in task {self.last_task!r}" if self.last_task else ""
            return PackRunResult(False, "timeout", f"no result within {timeout_s:g} s{where}",
                                 duration_s, changed)
        if status == "successful" and self.failure is None:
            return PackRunResult(True, None, "", duration_s, changed)
        if self.failure is not None:
            return PackRunResult(False, self.failure.task, self.failure.message, duration_s, changed)
        # Failed before any task (a playbook that does not parse, a bad inventory):
        # the reason is in ansible-playbook's own output.
        return PackRunResult(False, None, _excerpt_text(stdout_tail or f"ansible-runner status {status}"),
                             duration_s, changed)


def _result_excerpt(res: Mapping[str, Any]) -> str:
    """msg, stderr and stdout of a failed result; of its failed items for a loop."""
    failed = _failed_items(res)
    if failed:
        return _excerpt_text("\n".join(_item_text(item) for item in failed))
    return _excerpt_text(_item_text(res))


def _failed_items(res: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = res.get("results")
    if not isinstance(items, list):
        return []
    return [item for item in items
            if isinstance(item, Mapping) and (item.get("failed") or item.get("unreachable"))]


def _container_gone(res: Mapping[str, Any]) -> bool:
    """`docker exec` into a missing or stopped container: the docker connection reports
    a module failure where SSH would report the host unreachable."""
    for item in [res, *_failed_items(res)]:
        stderr = str(item.get("module_stderr") or "")
        if _CONTAINER_GONE.search(stderr):
            return True
    return False


def _item_text(res: Mapping[str, Any]) -> str:
    parts: list[str] = []
    cmd = res.get("cmd")
    if cmd:
        command = cmd if isinstance(cmd, str) else " ".join(str(c) for c in cmd)
        rc = res.get("rc")
        parts.append(f"`{command}` exited {rc}" if rc is not None else f"`{command}`")
    for key in _RESULT_KEYS:
        value = res.get(key)
        if not isinstance(value, str) or not value.strip() or value.strip() in _NOISE:
            continue
        # apt's msg already quotes its stderr, for one: say things once.
        if any(value.strip() in part for part in parts):
            continue
        parts.append(value.strip() if key == "msg" else f"{key}: {value.strip()}")
    return "\n".join(parts) or json.dumps(dict(res), default=str)[:MESSAGE_LIMIT]


def _excerpt_text(text: str) -> str:
    text = _BEARER.sub(r"\1[redacted]", _PRIVATE_KEY.sub("[private key redacted]", text)).strip()
    if len(text) <= MESSAGE_LIMIT:
        return text
    # Keep the head (what failed) and the tail (the last lines usually say why).
    half = MESSAGE_LIMIT // 2 - 10
    return f"{text[:half]}\n[...]\n{text[-half:]}"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 160 else line[:157] + "..."


def _read_tail(path: Path, limit: int = 8000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")

