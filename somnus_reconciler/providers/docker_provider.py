"""Docker adapter: observes and converges containers through dockerd's API.

The engine calls it through the `providers.ContainerProvider` protocol; the
`somnus image build` command and `container_images` use `image_present`,
`image_labels` and `import_rootfs`; `somnus exec` uses `exec_streaming`. Snapshots
and images are `docker_images`' part, commands run in a container `docker_exec`'s, on
this provider's connection. With `docker_images` and `docker_errors`,
this is the only module that imports `docker`. Every `docker.errors.*` and
`requests` exception is mapped once (`docker_errors.mapped`) into `ProviderError`
(naming the container or image and the action), its temporary kind (dockerd did
not answer in time) or `BackendUnavailable` (dockerd cannot be reached); nothing
docker-specific leaks.

Ownership (SPEC section 3): what `create` makes carries labels under
`io.somnus.*`; `delete` refuses anything without them. Containers are never
attached to Docker's bridge: network mode is `none` or `host` only, and they are
reached through `docker exec` over the daemon's socket. A container's GPU goes to
dockerd as the HostConfig's DeviceRequests (`device_requests`), which `planning.gpus` admitted.

Cost: `observe` is one listing call (`GET /containers/json?all=1`, what
docker-py calls `sparse=True`), never one inspect per container. `docker` is
imported on first connection, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from somnus_reconciler.providers import docker_backups, docker_exec, docker_files, docker_images
from somnus_reconciler.providers.docker_errors import is_image_not_found, is_not_found, mapped
from somnus_reconciler.providers.docker_labels import (
    LABEL_CONTAINER,
    LABEL_MANAGED,
    LABEL_POOL,
    LABEL_SPEC_HASH,
    actual_from_summary,
    mark_labels,
)
from somnus_reconciler.providers.docker_listing import PendingListing
from somnus_reconciler.providers.protocols import BackendUnavailable, ProviderError
from somnus_reconciler.values.actual import ActualContainer, Snapshot, WrittenFile
from somnus_reconciler.values.desired import DesiredContainer, Revealed, SecretFile

if TYPE_CHECKING:
    import docker


ALLOWED_NETWORK_MODES = ("none", "host")
STOP_TIMEOUT_S = 5

_IMAGE_HINT = "build it with: somnus image build"


class DockerProvider:
    """Implements `providers.ContainerProvider` against one dockerd.

    `base_url` None means docker's own defaults: `DOCKER_HOST`, else the local
    unix socket. The connection is opened on first use and kept until `close`: one
    per thread, since docker-py's client is not safe to share between threads (the
    engine runs the steps of different containers at the same time).
    """

    def __init__(self, base_url: str | None = None, *, listing: PendingListing | None = None) -> None:
        self._base_url = base_url
        self._listing = listing  # taken by the first observe
        self._local = threading.local()
        self._clients: list[docker.APIClient] = []  # every thread's, for `close`
        self._clients_lock = threading.Lock()
        self._version: str | None = None  # the API version the first connection agreed on

    # -- connection --------------------------------------------------------

    def _api(self) -> docker.APIClient:
        client: docker.APIClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._connect()
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _connect(self) -> docker.APIClient:
        import docker  # ~250 ms: paid only by processes that talk to dockerd

        where = self._base_url or "DOCKER_HOST or the default socket"
        # version "auto" costs one GET /version; pinning a version instead breaks on
        # daemons whose API range excludes it (20.10 tops out at 1.41, 29.x starts at
        # 1.44). So the first connection asks, and the other threads' take its answer.
        version = self._version or "auto"
        try:
            if self._base_url is None:
                client = docker.from_env(version=version)
            else:
                client = docker.DockerClient(base_url=self._base_url, version=version)
        except docker.errors.DockerException as e:
            raise BackendUnavailable(f"dockerd ({where}) cannot be reached: {e}", kind="container") from e
        self._version = client.api.api_version
        return client.api

    def drop_listing(self, *, unless_started_after: float | None = None) -> None:
        """Observe lists by itself: the child's listing may be stale (see `docker_listing`)."""
        listing = self._listing
        if listing is not None and (unless_started_after is None or listing.started_at <= unless_started_after):
            self._listing = None
            listing.cancel()

    def close(self) -> None:
        self.drop_listing()
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()

    def __enter__(self) -> DockerProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- observe -----------------------------------------------------------

    def observe(self) -> dict[str, ActualContainer]:
        """Every container, managed or not, by name (without the leading '/'); the first
        time, from the `docker_listing` child when one was started and answered."""
        listing, self._listing = self._listing, None
        summaries = listing.take() if listing is not None else None
        if summaries is None:
            with mapped("container/*", "list"):
                summaries = self._api().containers(all=True)
        result: dict[str, ActualContainer] = {}
        for summary in summaries:
            actual = actual_from_summary(summary)
            if actual is not None:
                result[actual.name] = actual
        return result

    def observe_one(self, name: str) -> ActualContainer | None:
        # A name filter rather than inspect: inspect also resolves ID prefixes,
        # and this gives the same fields as `observe`.
        with mapped(_address(name), "observe"):
            summaries = self._api().containers(
                all=True, filters={"name": f"^/{re.escape(name)}$"}
            )
        for summary in summaries:
            actual = actual_from_summary(summary)
            if actual is not None and actual.name == name:
                return actual
        return None

    # -- converge ----------------------------------------------------------

    def create(self, c: DesiredContainer, *, from_image: str | None = None, spec_hash: str | None = None) -> str:
        """Create and start `c` (from `from_image` instead of `c.image` when restoring
        a snapshot; the labels stay those of `c`, but for `spec_hash` when given).
        Returns the container ID. On a failed start the new container is removed."""
        address = c.address
        if c.network not in ALLOWED_NETWORK_MODES:
            raise ProviderError(
                address,
                "create",
                f"network {c.network!r} is not allowed (only {', '.join(ALLOWED_NETWORK_MODES)})",
            )
        api = self._api()
        host_config_args: dict[str, object] = {
            "network_mode": c.network,
            "restart_policy": {"Name": "no"},
            # docker-init as PID 1: reaps zombies and passes SIGTERM on, so a
            # `sleep infinity` stops at once instead of after the stop timeout.
            "init": True,
        }
        if c.cpus > 0:
            host_config_args["nano_cpus"] = round(c.cpus * 1e9)
        if c.memory > 0:
            host_config_args["mem_limit"] = c.memory
        if c.gpu is not None:
            host_config_args["device_requests"] = device_requests(c)
        if c.volumes:
            host_config_args["binds"] = {self._volume(c, name): {"bind": path, "mode": "rw"}
                                         for name, path in c.volumes}
        try:
            with mapped(address, "create"):
                created = api.create_container(
                    image=from_image or c.image,
                    command=list(c.command) if c.command is not None else None,
                    name=c.name,
                    environment=[f"{k}={v}" for k, v in c.env] + _revealed_env(c),
                    labels={**mark_labels(c), **({LABEL_SPEC_HASH: spec_hash} if spec_hash else {})},
                    host_config=api.create_host_config(**host_config_args),
                )
        except ProviderError as e:
            if is_image_not_found(e.__cause__):
                raise ProviderError(
                    address,
                    "create",
                    f"image {c.image} is not present locally; {_IMAGE_HINT} {c.image}",
                ) from e.__cause__
            raise
        container_id = created["Id"]
        try:
            with mapped(address, "start"):
                api.start(container_id)
        except ProviderError:
            # Leave nothing half-made: a created-but-never-started container
            # would look like a stopped one to the next plan.
            with contextlib.suppress(Exception):
                api.remove_container(container_id, v=True, force=True)
            raise
        return str(container_id)

    def _volume(self, c: DesiredContainer, name: str) -> str:
        """The named volume `name` of `c`, made (labelled as somnus's) unless it exists: a
        recreate mounts the same one, so its data outlives every container of that name."""
        volume = volume_name(c.name, name)
        with mapped(c.address, f"volume {name}"):
            self._api().create_volume(volume, labels={
                LABEL_MANAGED: "true", LABEL_POOL: c.pool, LABEL_CONTAINER: c.name})
        return volume

    def start(self, name: str) -> None:
        """Start a managed container (unpause a paused one); unmarked ones are refused (SPEC section 3)."""
        address = _address(name)
        actual = self.observe_one(name)
        if actual is None:
            raise ProviderError(address, "start", f"no container named {name}")
        if not actual.managed:
            raise ProviderError(address, "start", _unmarked(name, "start"))
        if actual.state == "paused":  # docker refuses to start a paused container
            with mapped(address, "unpause"):
                self._api().unpause(actual.container_id)
            return
        with mapped(address, "start"):
            self._api().start(actual.container_id)

    def run(self, name: str, argv: list[str], timeout_s: float = 60.0) -> int:
        """Exit code of `argv` run in the running container `name` (as `docker exec`), its
        output dropped (`docker_exec.run`)."""
        return docker_exec.run(self._api(), _address(name), name, argv, timeout_s)

    def exec_streaming(self, name: str, argv: Sequence[str], *, on_stdout: docker_exec.OutputSink,
                       on_stderr: docker_exec.OutputSink) -> int:
        """Exit code of `argv` run in the managed container `name`, its output handed on as it
        comes (`docker_exec.stream`); an unmarked container is refused."""
        container_id = self._managed(name, "exec").container_id
        return docker_exec.stream(self._api(), _address(name), container_id, argv,
                                  on_stdout=on_stdout, on_stderr=on_stderr)

    def delete(self, name: str, *, keep_snapshots: bool = False) -> None:
        """Stop and remove a managed container, its anonymous volumes and (unless
        `keep_snapshots`, as `restore` needs) its snapshot images. Its named volumes
        stay: they are the user's data, mounted again by the next container of the name.

        Absent already: only its snapshots go. Unmarked: refused, left as it is.
        """
        address = _address(name)
        actual = self.observe_one(name)
        if actual is None:
            if not keep_snapshots:
                self._delete_snapshots(name)
            return
        if not actual.managed:
            raise ProviderError(address, "delete", _unmarked(name, "delete"))
        api = self._api()
        with mapped(address, "stop"):
            if actual.running:
                api.stop(actual.container_id, timeout=STOP_TIMEOUT_S)
        with mapped(address, "delete"):
            try:
                api.remove_container(actual.container_id, v=True, force=True)
            except Exception as e:
                if not is_not_found(e):  # gone meanwhile: the goal is reached
                    raise
        if not keep_snapshots:
            self._delete_snapshots(name)

    def _delete_snapshots(self, name: str) -> None:
        for snap in self.snapshots(name):
            self.delete_snapshot(name, snap.name)

    # -- snapshots and images: docker_images, on this connection ------------
    def snapshot(self, name: str, snapshot: str, description: str) -> str:
        """`docker commit` of the managed container (not paused: see docker_images.commit);
        returns the image ID."""
        actual = self.observe_one(name)
        if actual is None or not actual.managed:
            raise ProviderError(_address(name), "snapshot", f"no managed container named {name}")
        return docker_images.commit(self._api(), actual.container_id, name, snapshot, description)

    def restore(self, c: DesiredContainer, snapshot: str) -> str:
        """Replace the container by one made from its snapshot with the spec `c`; returns the
        new ID. It keeps the spec hash the snapshot's container had (its labels went into
        the committed image), so a rolled-back recreate is planned again, not taken as done."""
        image = docker_images.snapshot_image(c.name, snapshot)
        had = (self.image_labels(image) or {}).get(LABEL_SPEC_HASH)
        self.delete(c.name, keep_snapshots=True)
        return self.create(c, from_image=image, spec_hash=had)

    def snapshots(self, name: str) -> list[Snapshot]:
        """Snapshots of this container, oldest first."""
        return docker_images.snapshots(self._api(), name)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        docker_images.delete_snapshot(self._api(), name, snapshot)

    # -- backups (docker_backups) --------------------------------------------
    def save_snapshot(self, name: str, snapshot: str, dest: Path) -> None:
        """The snapshot's committed image, as `docker save` writes it, at `dest`."""
        docker_backups.save_image(self._api(), _address(name), docker_images.snapshot_image(name, snapshot), dest)

    def load_snapshot(self, name: str, src: Path) -> str:
        """A saved image back into dockerd; its reference."""
        return docker_backups.load_image(self._api(), _address(name), src)

    def volume_mounts(self, name: str) -> list[tuple[str, str]]:
        """(volume, mount path) of the container's own named volumes."""
        actual = self._managed(name, "list volumes")
        return docker_backups.volume_mounts(self._api(), _address(name), actual.container_id, volume_name(name, ""))

    def archive_path(self, name: str, path: str, dest: Path) -> None:
        container_id = self._managed(name, "archive").container_id
        docker_backups.archive_path(self._api(), _address(name), container_id, path, dest)

    def replace_path(self, name: str, path: str, src: Path) -> None:
        container_id = self._managed(name, "restore").container_id
        docker_backups.replace_path(self._api(), _address(name), container_id, path, src)

    def write_files(self, name: str, writes: Sequence[tuple[SecretFile, Revealed]],
                    removes: Sequence[str]) -> list[WrittenFile]:
        """Secret files into the running container (docker_files); what it reports it wrote."""
        container_id = self._managed(name, "write files").container_id
        return docker_files.write_files(self._api(), _address(name), container_id, writes, removes)

    def _managed(self, name: str, action: str) -> ActualContainer:
        actual = self.observe_one(name)
        if actual is None or not actual.managed:
            raise ProviderError(_address(name), action, f"no managed container named {name}")
        return actual

    def image_present(self, reference: str) -> bool:
        return self.image_labels(reference) is not None

    def image_labels(self, reference: str) -> dict[str, str] | None:
        """The image's labels, or None when no image `reference` exists locally."""
        return docker_images.labels(self._api(), reference)

    def import_rootfs(self, tarball: Path, reference: str, *, labels: Mapping[str, str] | None = None,
                      changes: tuple[str, ...] = ()) -> None:
        """`docker import TARBALL REFERENCE`, with `labels` and Dockerfile `changes`."""
        docker_images.import_rootfs(self._api(), tarball, reference, labels=labels, changes=changes)


def device_requests(c: DesiredContainer) -> list[docker.types.DeviceRequest]:
    """The container's GPUs as the SDK's DeviceRequests (HostConfig.DeviceRequests)."""
    from docker.types import DeviceRequest

    return [] if c.gpu is None else [DeviceRequest(
        driver=c.gpu.driver, count=c.gpu.count, device_ids=list(c.gpu.device_ids),
        capabilities=[list(capabilities) for capabilities in c.gpu.capabilities])]


def volume_name(container: str, volume: str) -> str:
    return f"somnus-{container}-{volume}"


def _unmarked(name: str, verb: str) -> str:
    return (
        f"container {name} has no {LABEL_MANAGED}=true label; somnus did not create it "
        f"and will not {verb} it"
    )


def _address(name: str) -> str:
    return f"container/{name}"


def _revealed_env(c: DesiredContainer) -> list[str]:
    """The variables taken from Secrets, in clear for dockerd only."""
    if len(c.revealed_env) != len(c.secret_env):
        raise ProviderError(c.address, "create", "its Secret values were not decrypted (load_desired does)")
    return [f"{variable}={value.reveal()}" for variable, value in c.revealed_env]
