"""DockerProvider against the real dockerd.

Fails (does not skip) when dockerd cannot be reached. Every container made here
has a unique `somnus-test-<random>-...` name and is removed by the `names`
fixture. The base image `somnus/busybox:latest` is built (or found up to date)
through `container_images.build_container_image` and kept, as `somnus image
build` would keep it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import docker
import docker.errors
import pytest

from somnus_reconciler.images import container_images
from somnus_reconciler.providers import docker_labels, docker_provider
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.providers.protocols import BackendUnavailable, ProviderError
from somnus_reconciler.values.desired import DesiredContainer
from somnus_reconciler.values.diagnostics import Source

pytestmark = pytest.mark.integration

IMAGE = container_images.BUSYBOX_IMAGE
RUN_ID = secrets.token_hex(4)


@pytest.fixture(scope="module")
def provider(docker_client: docker.DockerClient) -> Iterator[DockerProvider]:
    p = DockerProvider()
    try:
        container_images.build_container_image(IMAGE, p)
    except BackendUnavailable as e:
        pytest.fail(f"dockerd is not reachable: {e}")
    yield p
    p.close()


@pytest.fixture
def names(docker_client: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    """Hands out unique container names and removes whatever got them."""
    made: list[str] = []

    def name(role: str) -> str:
        made.append(f"somnus-test-{RUN_ID}-{role}-{secrets.token_hex(3)}")
        return made[-1]

    yield name
    for n in made:
        try:
            docker_client.containers.get(n).remove(force=True, v=True)
        except docker.errors.NotFound:
            pass


def desired(name: str, **overrides: Any) -> DesiredContainer:
    fields: dict[str, Any] = dict(
        name=name,
        image=IMAGE,
        command=("sleep", "infinity"),
        cpus=0.5,
        memory=64 * 1024 * 1024,
        network="none",
        env=(("GREETING", "hello"), ("MODE", "test")),
        packs=(),
        owner="alice",
        source=Source(Path("t.yaml"), 1),
    )
    fields.update(overrides)
    return DesiredContainer(**fields)


def unmarked(docker_client: docker.DockerClient, name: str) -> Any:
    return docker_client.containers.create(IMAGE, ["sleep", "infinity"], name=name, network_mode="none")


def test_image_build_is_idempotent(provider: DockerProvider, docker_client: docker.DockerClient) -> None:
    before = docker_client.images.get(IMAGE).id
    lines: list[str] = []
    container_images.build_container_image(IMAGE, provider, log=lines.append)
    assert docker_client.images.get(IMAGE).id == before
    assert any("up to date" in line for line in lines), lines


def test_unknown_image_recipe_is_refused(provider: DockerProvider) -> None:
    with pytest.raises(container_images.ImageRecipeError, match="somnus/nothing:1"):
        container_images.build_container_image("somnus/nothing:1", provider)


def test_create_shows_running_and_managed(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    c = desired(names("create"))
    provider.create(c)

    actual = provider.observe()[c.name]
    assert actual.running
    assert actual.managed
    assert actual.spec_hash == c.spec_hash
    assert actual.image == IMAGE
    assert actual.container_id == docker_client.containers.get(c.name).id
    assert actual.labels[docker_labels.LABEL_OWNER] == "alice"
    assert json.loads(actual.labels[docker_labels.LABEL_PACKS]) == {}
    assert provider.observe_one(c.name) == actual
    # the image's applets work, through docker exec as the tool reaches containers
    code, out = docker_client.containers.get(c.name).exec_run(["sh", "-c", "echo $GREETING; ls /bin/cat"])
    assert (code, out.decode().split()) == (0, ["hello", "/bin/cat"])


def test_create_sets_limits_env_and_network(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    c = desired(names("limits"), cpus=1.5, memory=96 * 1024 * 1024)
    h = desired(names("host"), network="host", owner=None, env=())
    provider.create(c)
    provider.create(h)

    attrs = docker_client.api.inspect_container(c.name)
    assert attrs["HostConfig"]["NanoCpus"] == 1_500_000_000
    assert attrs["HostConfig"]["Memory"] == 96 * 1024 * 1024
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")
    assert {"GREETING=hello", "MODE=test"} <= set(attrs["Config"]["Env"])
    assert attrs["Config"]["Cmd"] == ["sleep", "infinity"]
    assert list(attrs["NetworkSettings"]["Networks"]) == ["none"]

    host_attrs = docker_client.api.inspect_container(h.name)
    assert host_attrs["HostConfig"]["NetworkMode"] == "host"
    assert docker_labels.LABEL_OWNER not in host_attrs["Config"]["Labels"]


def test_bridge_network_is_refused(provider: DockerProvider, names: Callable[[str], str]) -> None:
    c = desired(names("bridge"), network="bridge")
    with pytest.raises(ProviderError, match="bridge"):
        provider.create(c)
    assert provider.observe_one(c.name) is None


def test_create_of_missing_image_names_it(
    provider: DockerProvider, names: Callable[[str], str]
) -> None:
    missing = f"somnus/missing-{RUN_ID}:latest"
    c = desired(names("noimage"), image=missing)
    with pytest.raises(ProviderError) as info:
        provider.create(c)
    assert missing in str(info.value)
    assert "somnus image build" in str(info.value)
    assert info.value.address == c.address
    assert provider.observe_one(c.name) is None


def test_create_of_a_taken_name_fails(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    name = names("taken")
    unmarked(docker_client, name)
    with pytest.raises(ProviderError) as info:
        provider.create(desired(name))
    assert info.value.address == f"container/{name}"
    assert provider.observe_one(name).spec_hash is None  # type: ignore[union-attr]


def test_limits_the_daemon_rejects_leave_nothing(
    provider: DockerProvider, names: Callable[[str], str]
) -> None:
    c = desired(names("toomany"), cpus=4096.0)
    with pytest.raises(ProviderError, match="CPUs"):
        provider.create(c)
    assert provider.observe_one(c.name) is None


def test_command_that_cannot_run_shows_as_exited(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    # docker-init is PID 1, so a missing program is not a start error: the
    # container exits at once, and the next observe shows it not running.
    c = desired(names("badcmd"), command=("/no/such/program",))
    provider.create(c)
    docker_client.containers.get(c.name).wait(timeout=10)
    actual = provider.observe_one(c.name)
    assert actual is not None and actual.managed
    assert actual.state == "exited"


def test_unmarked_container_is_observed_without_hash(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    name = names("unmarked")
    made = unmarked(docker_client, name)

    actual = provider.observe()[name]
    assert actual.spec_hash is None
    assert not actual.managed
    assert actual.container_id == made.id
    assert actual.state == "created"
    assert provider.observe_one(name) == actual


def test_delete_refuses_unmarked_and_leaves_it(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    name = names("keep")
    made = unmarked(docker_client, name)
    made.start()

    with pytest.raises(ProviderError) as info:
        provider.delete(name)
    assert info.value.address == f"container/{name}"
    assert info.value.action == "delete"
    made.reload()
    assert made.status == "running"


def test_start_refuses_unmarked(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    name = names("nostart")
    made = unmarked(docker_client, name)

    with pytest.raises(ProviderError, match="will not start"):
        provider.start(name)
    made.reload()
    assert made.status == "created"


def test_stop_out_of_band_then_start(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    c = desired(names("restart"))
    provider.create(c)
    docker_client.containers.get(c.name).stop(timeout=5)

    stopped = provider.observe_one(c.name)
    assert stopped is not None and not stopped.running and stopped.state == "exited"

    provider.start(c.name)
    restarted = provider.observe_one(c.name)
    assert restarted is not None and restarted.running
    assert restarted.spec_hash == c.spec_hash


def test_start_of_a_paused_container_unpauses_it(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    c = desired(names("paused"))
    provider.create(c)
    docker_client.containers.get(c.name).pause()
    paused = provider.observe_one(c.name)
    assert paused is not None and paused.state == "paused"

    provider.start(c.name)
    resumed = provider.observe_one(c.name)
    assert resumed is not None and resumed.running and resumed.container_id == paused.container_id


def test_snapshots_beside_running_execs_leave_the_container_running(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    """A paused commit froze a `docker exec` that started beside it, and the container
    with it (cgroup v1): snapshots no longer pause."""
    c = desired(names("busy"))
    provider.create(c)
    stop = threading.Event()
    execs: list[int] = []

    def exec_in_a_loop() -> None:
        while not stop.is_set():
            execs.append(subprocess.run(["docker", "exec", c.name, "true"], capture_output=True,
                                        timeout=60).returncode)

    beside = threading.Thread(target=exec_in_a_loop)
    beside.start()
    try:
        for number in range(5):
            provider.snapshot(c.name, f"somnus-test-{number}", "beside execs")
    finally:
        stop.set()
        beside.join(timeout=120)
    assert not beside.is_alive() and execs and set(execs) == {0}
    assert docker_client.api.inspect_container(c.name)["State"]["Status"] == "running"
    assert len(provider.snapshots(c.name)) == 5
    provider.delete(c.name)


def test_a_restore_keeps_the_spec_hash_of_the_container_the_snapshot_was_taken_of(
    provider: DockerProvider, names: Callable[[str], str]
) -> None:
    """A recreate rolled back to its snapshot must not pass for the new spec: the next
    plan makes it again (issue 12, item 3)."""
    old = desired(names("restore"))
    provider.create(old)
    provider.snapshot(old.name, "somnus-recreate-1", "before recreate")
    new = desired(old.name, memory=96 * 1024 * 1024)
    provider.restore(new, "somnus-recreate-1")
    restored = provider.observe_one(old.name)
    assert restored is not None and restored.running
    assert restored.spec_hash == old.spec_hash != new.spec_hash
    provider.delete(old.name)


def test_named_volume_data_survives_a_recreate_and_a_restore(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    c = desired(names("volumes"), volumes=(("data", "/data"),))
    provider.create(c)
    volume = docker_provider.volume_name(c.name, "data")
    try:
        assert docker_client.volumes.get(volume).attrs["Labels"]["io.somnus.container"] == c.name
        subprocess.run(["docker", "exec", c.name, "sh", "-c", "echo kept > /data/file"], check=True)
        provider.snapshot(c.name, "somnus-test-volumes", "before recreate")
        provider.delete(c.name, keep_snapshots=True)
        recreated = desired(c.name, memory=96 * 1024 * 1024, volumes=(("data", "/data"),))
        provider.create(recreated)
        assert subprocess.run(["docker", "exec", c.name, "cat", "/data/file"], capture_output=True,
                              text=True).stdout == "kept\n"
        provider.restore(recreated, "somnus-test-volumes")
        assert subprocess.run(["docker", "exec", c.name, "cat", "/data/file"], capture_output=True,
                              text=True).stdout == "kept\n"
        provider.delete(c.name)
        assert docker_client.volumes.get(volume) is not None  # a prune leaves the data; removing it is the user's
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(volume).remove(force=True)


def test_delete_removes_container_and_volumes(
    provider: DockerProvider, docker_client: docker.DockerClient, names: Callable[[str], str]
) -> None:
    c = desired(names("delete"))
    provider.create(c)
    assert provider.observe_one(c.name) is not None

    provider.delete(c.name)
    assert provider.observe_one(c.name) is None
    assert c.name not in provider.observe()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(c.name)
    provider.delete(c.name)  # already gone: nothing to do


def test_observe_one_does_not_match_id_prefixes(
    provider: DockerProvider, names: Callable[[str], str]
) -> None:
    c = desired(names("prefix"))
    provider.create(c)
    actual = provider.observe_one(c.name)
    assert actual is not None
    assert provider.observe_one(actual.container_id[:12]) is None


def test_start_of_missing_container_is_provider_error(provider: DockerProvider) -> None:
    name = f"somnus-test-{RUN_ID}-absent"
    with pytest.raises(ProviderError) as info:
        provider.start(name)
    assert info.value.address == f"container/{name}"
    assert not isinstance(info.value.__cause__, ProviderError)


def test_unreachable_daemon_is_backend_unavailable(tmp_path: Path) -> None:
    p = DockerProvider(base_url=f"unix://{tmp_path}/no-dockerd.sock")
    with pytest.raises(BackendUnavailable):
        p.observe()
    p.close()
