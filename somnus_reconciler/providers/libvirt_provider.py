"""libvirt adapter: observes and changes domains. The only module importing `libvirt`.

Called by the engine (through the `VmProvider` protocol) and by the CLI's
`get` / `describe`. Every `libvirt.libvirtError` is mapped here, once, into
`ProviderError` naming the domain and the action, or `BackendUnavailable`
(temporary) when the connection to libvirtd is gone.

Each VM owns `<guest_dir>/vms/<name>/disk.qcow2`, a qcow2 overlay whose backing file is
the base image, and `seed.img` if its guest reads one; its serial console is logged to
`<state_dir>/consoles/<name>.log`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt

from somnus_reconciler.images import vm_images
from somnus_reconciler.providers import domain_xml, libvirt_checkpoints
from somnus_reconciler.providers.protocols import BackendUnavailable, ProviderError
from somnus_reconciler.settings import Settings
from somnus_reconciler.values.actual import ActualVm, PortForward, PowerState, Snapshot, VmMark
from somnus_reconciler.values.desired import DesiredVm
from somnus_reconciler.values.errors import PermanentError

# libvirt prints every error to stderr by default; we map and report them ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)
# Error codes of a connection that broke (libvirtd stopped or restarted).
_LOST_CONNECTION = (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN)
_LIVE_AND_CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
_ROOT_DISK = "vda"  # domain_xml.build: the overlay disk; the seed is vdb
_POWER = {
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.SHUTOFF,
}


_handed_out: set[int] = set()  # forwards chosen by this process: VMs made at the same time never share one
_handed_out_lock = threading.Lock()


def _free_loopback_port() -> int:
    with _handed_out_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


class LibvirtProvider:
    """Implements `providers.VmProvider` against one libvirt connection, which the
    engine's threads share (libvirt's connections are thread-safe); only opening and
    closing it is serialized here."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._conn: libvirt.virConnect | None = None
        self._conn_lock = threading.RLock()

    # -- connection -------------------------------------------------------
    @property
    def conn(self) -> libvirt.virConnect:
        """The connection, opened again when libvirtd went away (restarted) since the last call."""
        with self._conn_lock:
            if self._conn is not None and not self._alive(self._conn):
                self.close()
            if self._conn is None:
                try:
                    self._conn = libvirt.open(self._settings.libvirt_uri)
                except libvirt.libvirtError as e:
                    raise BackendUnavailable(
                        f"cannot connect to libvirt at {self._settings.libvirt_uri}: {e.get_error_message()}",
                        kind="vm",
                    ) from e
            return self._conn

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass  # already broken: the daemon went away
                self._conn = None

    def _unavailable(self, e: libvirt.libvirtError) -> BackendUnavailable | None:
        """The connection broke under a call (libvirtd stopped): forget it, say so."""
        lost = e.get_error_domain() == libvirt.VIR_FROM_RPC or e.get_error_code() in _LOST_CONNECTION or (
            # a system call error may be the guest's own (a disk file): only if the connection is gone
            e.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR
            and (self._conn is None or not self._alive(self._conn)))
        if not lost:
            return None
        self.close()
        return BackendUnavailable(f"libvirtd ({self._settings.libvirt_uri}) went away: "
                                  f"{e.get_error_message()}", kind="vm")

    @contextmanager
    def _mapped(self, name: str, action: str) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as e:
            raise self._unavailable(e) or ProviderError(f"vm/{name}", action, e.get_error_message() or str(e)) from e
        # PermanentError: what the image and guest_access helpers raise (an image not
        # built, a seed disk that cannot be made). A ProviderError passes through as it is.
        except (OSError, subprocess.CalledProcessError, PermanentError) as e:
            raise ProviderError(f"vm/{name}", action, str(e)) from e

    def _domain(self, name: str) -> libvirt.virDomain:
        return self.conn.lookupByName(name)

    # -- observe ----------------------------------------------------------
    def observe(self) -> dict[str, ActualVm]:
        """One listing call, then each domain's XML (the mark lives in it)."""
        try:
            domains = self.conn.listAllDomains(0)
        except libvirt.libvirtError as e:
            raise self._unavailable(e) or BackendUnavailable(
                f"cannot list libvirt domains: {e.get_error_message()}", kind="vm") from e
        found: dict[str, ActualVm] = {}
        for dom in domains:
            try:
                vm = self._read(dom)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined between the listing and this call
                raise self._unavailable(e) or ProviderError(f"vm/{dom.name()}", "read XML",
                                                            e.get_error_message()) from e
            found[vm.name] = vm
        return found

    def observe_one(self, name: str) -> ActualVm | None:
        try:
            dom = self._domain(name)
            return self._read(dom, _POWER.get(dom.state()[0], PowerState.OTHER))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._unavailable(e) or ProviderError(f"vm/{name}", "observe", e.get_error_message()) from e

    @staticmethod
    def _read(dom: libvirt.virDomain, power: PowerState | None = None) -> ActualVm:
        """The live XML and, while the domain runs, its persistent definition, which
        holds the balloon target (the live XML holds what the guest's balloon reports).
        `ID()` reads the fresh handle's id without a call to libvirtd: a no-op reconcile
        pays one extra call per running domain only."""
        live = dom.XMLDesc(0)
        definition = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if dom.ID() != -1 else None
        return domain_xml.parse(live, power, definition)

    def _console_log(self, name: str) -> Path:
        return self._settings.console_dir / f"{name}.log"

    # -- act --------------------------------------------------------------
    def _vm_dir(self, name: str) -> Path:
        return self._settings.vms_dir / name

    def _boot_source(self, vm: DesiredVm) -> domain_xml.BootSource:
        image = vm_images.find_vm_image(vm.image, self._settings.images_dir)
        services = vm_images.guest_services(vm.image)  # no agent nor sshd (tiny-linux): no seed to read
        seeded = services.agent or services.ssh or vm_images.is_image_path(vm.image)
        return domain_xml.BootSource(
            disk=self._vm_dir(vm.name) / "disk.qcow2",
            kernel=image.kernel, initrd=image.initrd, cmdline=image.cmdline,
            seed=self._vm_dir(vm.name) / "seed.img" if seeded else None,
        )

    def _xml(self, vm: DesiredVm, forwards: tuple[PortForward, ...], kept: VmMark | None = None,
             uuid: str | None = None) -> str:
        """The domain of `vm`, keeping the pack and secret file records of the mark `kept`."""
        return domain_xml.build(
            vm, self._boot_source(vm), domain_type=self._settings.domain_type,
            console_log=self._console_log(vm.name), forwards=forwards, uuid=uuid,
            packs=kept.packs if kept else (), files=kept.files if kept else (),
        )

    def create(self, vm: DesiredVm) -> None:
        """Overlay disk, define, and start when `vm.running`."""
        with self._mapped(vm.name, "create"):
            image = vm_images.find_vm_image(vm.image, self._settings.images_dir)
            vm_dir = self._vm_dir(vm.name)
            vm_dir.mkdir(parents=True, exist_ok=True)
            vm_dir.chmod(0o755)
            self._settings.console_dir.mkdir(parents=True, exist_ok=True)
            disk = vm_dir / "disk.qcow2"
            disk.unlink(missing_ok=True)
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                 "-b", str(image.disk), str(disk), str(vm.disk_size)],
                check=True, capture_output=True, text=True,
            )
            if self._boot_source(vm).seed is not None:
                self._write_seed(vm.name)
            forwards = tuple(
                PortForward(name, _free_loopback_port(), port)
                for name, port in domain_xml.GUEST_PORTS.items()
            )
            dom = self.conn.defineXML(self._xml(vm, forwards))
            if vm.running:
                dom.create()

    def _write_seed(self, name: str) -> None:
        """The read-only seed disk: the VM's public key, agent token and identity (made once, kept)."""
        from somnus_reconciler.providers import guest_access  # keys and seeds: only a new VM needs them
        guest_access.build_seed_disk(self._vm_dir(name) / "seed.img",
                                     guest_access.seed_files(self._settings.state_dir, name))

    def start(self, name: str) -> None:
        with self._mapped(name, "start"):
            dom = self._domain(name)
            if not dom.isActive():
                dom.create()

    def stop(self, name: str) -> None:
        """ACPI shutdown, then destroy once the timeout has passed."""
        with self._mapped(name, "stop"):
            dom = self._domain(name)
            if not dom.isActive():
                return
            try:
                dom.shutdown()
            except libvirt.libvirtError:
                pass  # the guest may not take ACPI requests; destroy below
            deadline = time.monotonic() + self._settings.shutdown_timeout_s
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return
                time.sleep(0.25)
            if dom.isActive():
                dom.destroy()

    def redefine(self, vm: DesiredVm) -> None:
        """Persistent config := `vm`, keeping the disk, forwards, packs and files applied."""
        with self._mapped(vm.name, "redefine"):
            dom = self._domain(vm.name)
            mark = domain_xml.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).mark
            self.conn.defineXML(self._xml(vm, mark.forwards if mark else (), mark, dom.UUIDString()))

    def resize_live(self, vm: DesiredVm) -> None:
        """vCPUs and memory of a running guest, live and persistent, within its maxima."""
        with self._mapped(vm.name, "resize live"):
            dom = self._domain(vm.name)
            current = self._read(dom)
            r = vm.resources
            if current.vcpus != r.vcpus:
                dom.setVcpusFlags(r.vcpus, _LIVE_AND_CONFIG)
            if current.memory != r.memory:
                dom.setMemoryFlags(r.memory // 1024, _LIVE_AND_CONFIG)

    def grow_disk(self, vm: DesiredVm) -> None:
        """The disk to `vm.disk_size`, keeping every byte: through QEMU (`blockResize`)
        while the guest runs, else the qcow2 file. Already that large or larger: nothing."""
        with self._mapped(vm.name, "grow disk"):
            dom = self._domain(vm.name)
            capacity = dom.blockInfo(_ROOT_DISK)[0]
            if capacity >= vm.disk_size:
                return
            if dom.isActive():
                dom.blockResize(_ROOT_DISK, vm.disk_size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            else:
                subprocess.run(["qemu-img", "resize", "-q", str(self._vm_dir(vm.name) / "disk.qcow2"),
                                str(vm.disk_size)], check=True, capture_output=True, text=True)

    def write_mark(self, vm: DesiredVm) -> None:
        """Record the spec hash of `vm` in the running and the persistent definition."""
        with self._mapped(vm.name, "write mark"):
            dom = self._domain(vm.name)
            mark = domain_xml.parse(dom.XMLDesc(0)).mark
            forwards, packs, files = (mark.forwards, mark.packs, mark.files) if mark else ((), (), ())
            flags = _LIVE_AND_CONFIG if dom.isActive() else libvirt.VIR_DOMAIN_AFFECT_CONFIG
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                domain_xml.mark_xml(vm, forwards, packs, files),
                "somnus", domain_xml.SOMNUS_NS, flags,
            )

    def write_packs(self, name: str, packs: tuple[tuple[str, str], ...]) -> None:
        """Record the packs applied, with their fingerprints, in the mark (live and persistent)."""
        self._write_records(name, packs=packs)

    def write_files(self, name: str, files: tuple[tuple[str, str], ...]) -> None:
        """Record the secret files written, with their keyed digests, in the mark (live and persistent)."""
        self._write_records(name, files=files)

    def _write_records(self, name: str, **records: tuple[tuple[str, str], ...]) -> None:
        with self._mapped(name, "write mark"):
            dom = self._domain(name)
            mark = domain_xml.mark_with_records(dom.XMLDesc(0), **records)
            if mark is None:
                raise ProviderError(f"vm/{name}", "write mark", "the domain carries no somnus mark")
            flags = _LIVE_AND_CONFIG if dom.isActive() else libvirt.VIR_DOMAIN_AFFECT_CONFIG
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, mark, "somnus", domain_xml.SOMNUS_NS, flags)

    # -- backups ------------------------------------------------------------
    def definition(self, name: str) -> str:
        """The persistent domain XML, with its mark: what a backup keeps beside the disk."""
        with self._mapped(name, "read definition"):
            return str(self._domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    def end_stale_backup_job(self, name: str) -> bool:
        """Abort a backup job a killed virtnbdbackup left on the domain; whether there was one."""
        with self._mapped(name, "end a stale backup job"):
            return libvirt_checkpoints.end_stale_backup_job(self._domain(name))

    def disk_path(self, name: str) -> Path:
        return self._vm_dir(name) / "disk.qcow2"

    def put_back(self, name: str, definition: str, disk: Path, *, start: bool) -> None:
        """The VM as a backup had it: `disk` (a complete qcow2) becomes its disk and
        `definition` its domain, replacing what is there (whose snapshot and checkpoint
        metadata describe the old disk and go with it)."""
        with self._mapped(name, "put back"):
            try:
                dom: libvirt.virDomain | None = self._domain(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                dom = None
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(_UNDEFINE_FLAGS)
            disk.replace(self.disk_path(name))
            self._write_seed(name)  # with the keys put back, which the restored guest knows
            restored = self.conn.defineXML(definition)
            if start:
                restored.create()

    # -- snapshots ----------------------------------------------------------
    def snapshot(self, name: str, snapshot: str, description: str) -> None:
        with self._mapped(name, f"snapshot {snapshot}"):
            self._domain(name).snapshotCreateXML(domain_xml.snapshot_xml(snapshot, description), 0)

    def revert(self, name: str, snapshot: str) -> None:
        """Back to the snapshot: disk, memory and definition, running if it was.

        QEMU refuses to load an internal snapshot while the disk has dirty bitmaps
        ("Device has active dirty bitmaps"), which backup checkpoints are; so the
        checkpoints go first. Their chain could not be continued anyway: a revert
        changes blocks that no bitmap saw (engine.backups starts a new chain).
        """
        with self._mapped(name, f"revert to {snapshot}"):
            dom = self._domain(name)
            libvirt_checkpoints.drop_checkpoints(dom, self.disk_path(name))
            dom.revertToSnapshot(dom.snapshotLookupByName(snapshot, 0), 0)

    def snapshots(self, name: str) -> list[Snapshot]:
        """The snapshots somnus took of this VM, oldest first."""
        with self._mapped(name, "list snapshots"):
            found = [Snapshot(*domain_xml.parse_snapshot(snap.getXMLDesc(0)))
                     for snap in self._domain(name).listAllSnapshots(0) if snap.getName().startswith("somnus-")]
        return sorted(found, key=lambda s: (s.created, s.name))

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        with self._mapped(name, f"delete snapshot {snapshot}"):
            self._domain(name).snapshotLookupByName(snapshot, 0).delete(0)

    def delete(self, name: str) -> None:
        """Destroy, undefine with snapshot metadata, and remove the VM's disk."""
        with self._mapped(name, "delete"):
            dom = self._domain(name)
            if domain_xml.parse(dom.XMLDesc(0)).mark is None:
                raise ProviderError(f"vm/{name}", "delete", "the domain carries no somnus mark; left alone")
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(_UNDEFINE_FLAGS)
            shutil.rmtree(self._vm_dir(name), ignore_errors=True)
            from somnus_reconciler.providers import guest_access
            guest_access.remove_keypair(self._settings.state_dir, name)
