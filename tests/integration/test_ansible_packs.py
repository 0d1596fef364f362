"""ansible_provider.run_pack against a real container, with ansible-runner and dockerd.

The guest is a `somnus/base:bookworm` container with network none, reached
through `docker exec` (community.docker.docker). Its only apt source is a local
repository of .deb packages built here with dpkg-deb (somnus-hello, and
somnus-broken whose postinst fails), copied in by the test pack `local-repo`'s
own playbook. Nothing leaves the host.

Fails, never skips, when dockerd, the base image or ansible-runner is missing.
Every container made here is named `somnus-ansible-<random>-...` and removed.
Windows and macOS have no guest here: their task lists are checked with
`ansible-playbook --syntax-check` and `--list-tasks`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from somnus_reconciler.images import container_images
from somnus_reconciler.manifests import pack_files
from somnus_reconciler.providers import guest_access
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.desired import DesiredPack
from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.model import CapabilityPackSpec
from testkit import ansible_tasks, apt_repo

try:
    from somnus_reconciler.providers import ansible_inputs, ansible_provider, ansible_results
except ImportError as e:  # ansible-runner is a dependency: its absence is a failure
    pytest.fail(f"ansible-runner is not importable: {e}; pip install -e .", pytrace=False)

pytestmark = pytest.mark.integration

IMAGE = container_images.DEBIAN_BASE_IMAGE
RUN_ID = secrets.token_hex(4)
APT_TASK = "Apt: install packages"
VERIFY_TASK = "Verify: run the pack's checks"
GUEST_REPO = apt_repo.GUEST_REPO

# name -> (control fields beyond the usual, files {path: (mode, content)}, maintainer scripts)
@pytest.fixture(scope="module")
def local_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return apt_repo.build_local_repo(tmp_path_factory.mktemp("apt-repo"), tmp_path_factory.mktemp("deb-build"))


# -- packs --------------------------------------------------------------------

@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory: pytest.TempPathFactory, local_repo: Path) -> Path:
    """Where the test packs' manifest and playbooks live (playbook paths are relative to it)."""
    directory = tmp_path_factory.mktemp("packs")
    (directory / "playbooks").mkdir()
    apt_repo.write_local_repo_playbook(directory / "playbooks" / "local-repo.yml", local_repo)
    return directory


@pytest.fixture(scope="module")
def make_pack(pack_dir: Path) -> Callable[..., DesiredPack]:
    def make(name: str, **spec: Any) -> DesiredPack:
        return DesiredPack(name=name, spec=CapabilityPackSpec.model_validate(spec),
                           source=Source(pack_dir / "packs.yaml", 1))
    return make


@pytest.fixture(scope="module")
def local_repo_pack(make_pack: Callable[..., DesiredPack]) -> DesiredPack:
    return make_pack("local-repo", description="the tests' own apt repository",
                     playbook="playbooks/local-repo.yml",
                     verify=["apt-cache show somnus-hello"])


# -- the guest ----------------------------------------------------------------

@pytest.fixture(scope="module")
def base_image(docker_client: docker.DockerClient) -> str:
    provider = DockerProvider()
    try:
        container_images.build_container_image(IMAGE, provider)  # cached by recipe
    except Exception as e:  # noqa: BLE001 - any reason for no image fails the module
        pytest.fail(f"{IMAGE} cannot be built: {e}")
    finally:
        provider.close()
    return IMAGE


@pytest.fixture(scope="module")
def new_guest(docker_client: docker.DockerClient, base_image: str, local_repo_pack: DesiredPack,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Any]]:
    """Starts network-less containers with the local repository installed; removes them."""
    made: list[Any] = []
    work_dir = tmp_path_factory.mktemp("ansible-work")

    def start(suffix: str) -> Any:
        container = docker_client.containers.run(
            base_image, ["sleep", "infinity"], name=f"somnus-ansible-{RUN_ID}-{suffix}",
            detach=True, network_mode="none", labels={"io.somnus.test": "ansible"})
        made.append(container)
        result = ansible_provider.run_pack(ansible_inputs.DockerTarget(container.name), local_repo_pack,
                                           os_family="debian", work_dir=work_dir, timeout_s=300)
        assert result.ok, f"local-repo pack failed: {result}"
        return container

    yield start
    for container in made:
        container.remove(force=True)


@pytest.fixture(scope="module")
def guest(new_guest: Callable[[str], Any]) -> Any:
    return new_guest("shared")


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path / "work"


def run(guest: Any, pack: DesiredPack, work_dir: Path, **kwargs: Any) -> tuple[ansible_results.PackRunResult, list[str]]:
    lines: list[str] = []
    result = ansible_provider.run_pack(ansible_inputs.DockerTarget(guest.name), pack, os_family="debian",
                                       work_dir=work_dir, on_event=lines.append, **kwargs)
    return result, lines


def in_guest(guest: Any, *argv: str) -> tuple[int, str]:
    exit_code, output = guest.exec_run(list(argv))
    return exit_code, output.decode().strip()


# -- container guests ---------------------------------------------------------

def test_hello_installs_verifies_then_a_second_run_changes_nothing_and_uninstall_removes_it(
        guest: Any, make_pack: Callable[..., DesiredPack], work_dir: Path) -> None:
    hello = make_pack("hello", packages={"apt": ["somnus-hello"]},
                      verify=["somnus-hello", 'test "$(somnus-hello)" = hello'])

    first, lines = run(guest, hello, work_dir)
    assert first.ok, first
    assert (first.failed_task, first.message) == (None, "")
    assert first.changed >= 1
    assert f"TASK {APT_TASK} ... changed" in lines
    assert f"TASK {VERIFY_TASK} ... ok" in lines
    assert in_guest(guest, "somnus-hello") == (0, "hello")

    second, lines = run(guest, hello, work_dir)
    assert second.ok, second
    assert second.changed == 0, lines
    assert f"TASK {APT_TASK} ... ok" in lines

    removed, lines = run(guest, hello, work_dir, action="uninstall")
    assert removed.ok, removed
    assert removed.changed >= 1
    assert "TASK Apt: remove packages ... changed" in lines
    assert not any(line.startswith(f"TASK {VERIFY_TASK} ... ok") for line in lines)
    assert in_guest(guest, "sh", "-c", "command -v somnus-hello")[0] != 0
    assert list(work_dir.iterdir()) == []  # every run's private data directory is gone


def test_a_missing_package_fails_in_the_apt_task(guest: Any, make_pack: Callable[..., DesiredPack],
                                                 work_dir: Path) -> None:
    pack = make_pack("missing", packages={"apt": ["somnus-hello", "somnus-no-such-package"]},
                     verify=["true"])
    result, lines = run(guest, pack, work_dir)
    assert not result.ok
    assert result.failed_task == APT_TASK
    assert "somnus-no-such-package" in result.message
    assert len(result.message) <= ansible_results.MESSAGE_LIMIT
    assert any(line.startswith(f"TASK {APT_TASK} ... failed") for line in lines)
    assert not any(line.startswith(f"TASK {VERIFY_TASK}") for line in lines)


def test_a_failing_verify_command_fails_in_the_verify_task(guest: Any, make_pack: Callable[..., DesiredPack],
                                                           work_dir: Path) -> None:
    pack = make_pack("wrong-greeting", packages={"apt": ["somnus-hello"]},
                     verify=["somnus-hello", 'test "$(somnus-hello)" = goodbye', "echo not reached"])
    result, _ = run(guest, pack, work_dir)
    assert not result.ok
    assert result.failed_task == VERIFY_TASK
    assert 'test "$(somnus-hello)" = goodbye' in result.message
    assert "exited 1" in result.message
    assert "somnus-hello`" not in result.message  # the passing check is not blamed


def test_a_failing_postinst_fails_in_the_apt_task_with_dpkgs_reason(
        new_guest: Callable[[str], Any], make_pack: Callable[..., DesiredPack], work_dir: Path) -> None:
    guest = new_guest("broken")  # of its own: a half-configured package stays behind
    result, _ = run(guest, make_pack("broken", packages={"apt": ["somnus-broken"]}), work_dir)
    assert not result.ok
    assert result.failed_task == APT_TASK
    assert "somnus-broken" in result.message
    assert "post-installation" in result.message


def test_a_run_that_outlasts_its_timeout_is_reported_as_timeout(
        guest: Any, make_pack: Callable[..., DesiredPack], work_dir: Path) -> None:
    result, _ = run(guest, make_pack("slow", verify=["sleep 120"]), work_dir, timeout_s=10)
    assert not result.ok
    assert result.failed_task == "timeout"
    assert VERIFY_TASK in result.message
    assert result.duration_s < 60


def test_a_missing_container_is_unreachable(base_image: str, make_pack: Callable[..., DesiredPack],
                                           work_dir: Path) -> None:
    result = ansible_provider.run_pack(
        ansible_inputs.DockerTarget(f"somnus-ansible-{RUN_ID}-absent"), make_pack("any", verify=["true"]),
        os_family="debian", work_dir=work_dir, timeout_s=120)
    assert not result.ok
    assert result.failed_task == "unreachable"
    assert "absent" in result.message


def test_a_closed_loopback_port_is_unreachable(make_pack: Callable[..., DesiredPack], work_dir: Path,
                                               tmp_path: Path) -> None:
    guest_access.seed_files(tmp_path, "closed")  # its key and pinned host key
    key = guest_access.ensure_keypair(tmp_path, "closed")
    target = ansible_inputs.SshTarget("127.0.0.1", 1, "somnus", key)  # port 1: nothing listens
    result = ansible_provider.run_pack(target, make_pack("any", verify=["true"]), os_family="debian",
                                       work_dir=work_dir, timeout_s=120)
    assert not result.ok
    assert result.failed_task == "unreachable"
    assert "PRIVATE KEY" not in result.message and key.private_openssh().decode() not in result.message


# -- checks before any traffic --------------------------------------------------

@pytest.mark.parametrize("host", ["192.168.122.10", "10.0.0.2", "172.17.0.2", "example.org"])
def test_a_non_loopback_vm_address_is_refused_before_any_traffic(
        host: str, make_pack: Callable[..., DesiredPack], work_dir: Path, tmp_path: Path) -> None:
    target = ansible_inputs.SshTarget(host, 22, "somnus", guest_access.ensure_keypair(tmp_path, "x"))
    with pytest.raises(ProviderError, match="not a loopback address"):
        ansible_provider.run_pack(target, make_pack("any"), os_family="debian", work_dir=work_dir)
    assert not work_dir.exists()


@pytest.mark.parametrize(("os_family", "action"), [("solaris", "install"), ("debian", "upgrade")])
def test_unknown_families_and_actions_are_provider_errors(
        os_family: str, action: str, make_pack: Callable[..., DesiredPack], work_dir: Path) -> None:
    with pytest.raises(ProviderError, match="unknown"):
        ansible_provider.run_pack(ansible_inputs.DockerTarget("x"), make_pack("any"),
                                  os_family=os_family, action=action, work_dir=work_dir)


def test_a_missing_pack_playbook_is_a_provider_error(make_pack: Callable[..., DesiredPack],
                                                     work_dir: Path) -> None:
    pack = make_pack("lost", playbook="playbooks/absent.yml")
    with pytest.raises(ProviderError, match="absent.yml does not exist"):
        ansible_provider.run_pack(ansible_inputs.DockerTarget("x"), pack, os_family="debian", work_dir=work_dir)


# -- Windows and macOS: what would run ------------------------------------------

def task_modules(os_family: str) -> dict[str, str]:
    """Task name -> module, over the generic playbook's task files for one family."""
    modules: dict[str, str] = {}
    for path in (pack_files.PLAYBOOKS_DIR / "tasks").glob(f"{os_family}-*.yml"):
        for task in yaml.safe_load(path.read_text()):
            module = next(k for k in task if "." in k)
            assert modules.setdefault(task["name"], module) == module, f"{task['name']} uses two modules"
    return modules


FAMILY_TASKS = {
    ("windows", "install"): [("Winget: find installed packages", "ansible.windows.win_command"),
                             ("Winget: install missing packages", "ansible.windows.win_command"),
                             (VERIFY_TASK, "ansible.windows.win_shell")],
    ("windows", "uninstall"): [("Winget: find installed packages", "ansible.windows.win_command"),
                               ("Winget: uninstall installed packages", "ansible.windows.win_command"),
                               (VERIFY_TASK, "ansible.windows.win_shell")],
    ("macos", "install"): [("Brew: install packages", "community.general.homebrew"),
                           (VERIFY_TASK, "ansible.builtin.shell")],
    ("macos", "uninstall"): [("Brew: remove packages", "community.general.homebrew"),
                             (VERIFY_TASK, "ansible.builtin.shell")],
    ("debian", "install"): [("Apt: look for package lists", "ansible.builtin.find"),
                            (APT_TASK, "ansible.builtin.apt"), (VERIFY_TASK, "ansible.builtin.shell")],
    ("debian", "uninstall"): [("Apt: remove packages", "ansible.builtin.apt"),
                              (VERIFY_TASK, "ansible.builtin.shell")],
}


@pytest.mark.parametrize(("os_family", "action"), sorted(FAMILY_TASKS))
def test_each_family_runs_its_own_package_manager(os_family: str, action: str,
                                                  make_pack: Callable[..., DesiredPack]) -> None:
    pack = make_pack("node", packages={"apt": ["nodejs"], "winget": ["OpenJS.NodeJS.LTS"], "brew": ["node"]},
                     verify=["node --version"])
    variables = ansible_inputs.extra_vars(pack, os_family, action)
    syntax = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check", "-i", "guest-host,",
         "-e", json.dumps(variables), str(ansible_inputs.PACK_PLAYBOOK)],
        capture_output=True, text=True, env=dict(os.environ, ANSIBLE_NOCOLOR="1"), check=False)
    assert syntax.returncode == 0, syntax.stderr

    names = ansible_tasks.render_tasks(pack, os_family, action)
    modules = task_modules(os_family)
    assert [(name, modules[name]) for name in names] == FAMILY_TASKS[(os_family, action)]


def test_a_packs_own_playbook_runs_between_packages_and_verify(make_pack: Callable[..., DesiredPack],
                                                              local_repo_pack: DesiredPack) -> None:
    assert ansible_tasks.render_tasks(local_repo_pack, "debian", "install") == [
        "Apt: look for package lists", APT_TASK, "Copy the repository into the guest", "Set the network sources aside",
        "Point apt at the local repository", "Refresh the apt cache", VERIFY_TASK]
    # Uninstalling removes packages only: the pack's own playbook does not run.
    assert ansible_tasks.render_tasks(local_repo_pack, "debian", "uninstall") == [
        "Apt: remove packages", VERIFY_TASK]
