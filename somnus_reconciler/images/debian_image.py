"""The "debian-12" VM image recipe: a debootstrapped Debian bookworm that boots its own kernel.

`vm_images.build_vm_image` calls `build` with `DebianRecipe()`; `vm_images` also
reads the recipe's digest (which keys the image's directory) and its kernel
command line.

The guest has its own kernel and initramfs, systemd, OpenSSH (root by key
only), python3 and python3-apt (what Ansible needs). Keys and other secrets
reach it at boot from a read-only seed disk labelled `SEED_LABEL` (made by
`providers.guest_access.build_seed_disk`, which reads the label as `vm_images.SEED_LABEL`);
it prints `store.GUEST_READY_LINE` on the serial console once
multi-user.target is reached. Its root file system comes from
`rootfs.debootstrap_rootfs`; its apt sources and the addresses of their hosts
are the build host's (see `rootfs`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from somnus_reconciler.images import rootfs, store

# Label of the read-only disk the host gives a debian-12 guest at boot; its
# `authorized_keys` goes to /root/.ssh/, `ssh_host_ed25519_key` (the host key the
# host made and pinned, providers.guest_identity) to /etc/ssh/, every other file
# to /etc/somnus/.
SEED_LABEL = "SOMNUS-SEED"
ROOT_LABEL = "somnus-root"

# x-systemd.growfs: the root file system grows to the VM's diskSize at boot
# (the image's own disk is only `DebianRecipe.disk_size`).
_GUEST_FSTAB = f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro,x-systemd.growfs 0 1\n"

_GUEST_SSHD_CONFIG = """\
# Somnus: root by key only; no passwords anywhere. Read before sshd_config's own
# settings, so these win.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
"""

_GUEST_NETWORK = """\
# QEMU user-mode networking answers DHCP on the one virtio NIC.
[Match]
Name=eth0

[Network]
DHCP=ipv4

[DHCPv4]
UseDNS=no
UseNTP=no
"""

# The initramfs is made in a chroot, where the root file system's type cannot be
# probed: named here, so that its fsck goes in. No swap, so nothing to resume.
_GUEST_INITRAMFS_CONF = """\
FSTYPE=ext4
RESUME=none
"""

# A guest without a host key from its seed makes its own at first boot (an
# image-wide key would be shared by every VM built from it); somnus's hosts
# refuse it, as they know only the key they made.
_GUEST_HOSTKEY_UNIT = """\
[Unit]
Description=Somnus: make this guest's SSH host key
After=somnus-seed.service
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
"""

_GUEST_SEED_SCRIPT = f"""\
#!/bin/sh
# Somnus: install what the host put on the disk labelled {SEED_LABEL}:
# authorized_keys for root, the SSH host key for sshd, every other file (e.g. the
# agent token and its TLS key) in /etc/somnus.
set -eu
# blkid scans the block devices itself, so this does not wait for udev's links.
device=$(blkid -L {SEED_LABEL} || true)
if [ -z "$device" ]; then
    echo "somnus-seed: no disk labelled {SEED_LABEL}; nothing to install"
    exit 0
fi
mnt=$(mktemp -d)
trap 'umount "$mnt" 2>/dev/null || true; rmdir "$mnt"' EXIT
mount -o ro,nosuid,nodev,noexec "$device" "$mnt"
umask 077
install -d -m 0700 /root/.ssh /etc/somnus
for file in "$mnt"/*; do
    [ -f "$file" ] || continue
    name=${{file##*/}}
    if [ "$name" = authorized_keys ]; then
        install -m 0600 "$file" /root/.ssh/authorized_keys
    elif [ "$name" = ssh_host_ed25519_key ]; then
        install -m 0600 "$file" /etc/ssh/ssh_host_ed25519_key
        rm -f /etc/ssh/ssh_host_ed25519_key.pub
    else
        install -m 0600 "$file" "/etc/somnus/$name"
    fi
    echo "somnus-seed: installed $name"
done
"""

_GUEST_SEED_UNIT = f"""\
[Unit]
Description=Somnus: install SSH keys and secrets from the disk labelled {SEED_LABEL}
After=local-fs.target
Before=ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/somnus-seed

[Install]
WantedBy=multi-user.target
"""

# Wanted by graphical.target and ordered after multi-user.target: a unit wanted
# by multi-user.target itself cannot wait for it (the target orders itself after
# what it wants, which would be a cycle).
_GUEST_READY_UNIT = f"""\
[Unit]
Description=Somnus: say on the serial console that multi-user.target is reached
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{store.GUEST_READY_LINE}" >/dev/ttyS0'

[Install]
WantedBy=graphical.target
"""


# The in-guest agent (agent/somnus_agent, SPEC section 7) runs on the guest's own
# python3, from the image, once the seed has put its token in /etc/somnus/.
AGENT_SOURCE = Path(__file__).resolve().parents[2] / "agent" / "somnus_agent"
AGENT_GUEST_DIR = "usr/lib/somnus-agent/somnus_agent"
AGENT_GUEST_PORT = 7465
AGENT_TOKEN_FILE = "agent-token"  # in /etc/somnus/, from the seed
AGENT_CONFIG_FILE = "agent.json"  # in /etc/somnus/; the seed may bring its own
AGENT_CERT_FILE = "agent-cert.pem"  # in /etc/somnus/, from the seed (providers.guest_identity)
AGENT_KEY_FILE = "agent-key.pem"

_GUEST_AGENT_CONFIG = json.dumps(
    {"processes": [], "watch_logs": ["/var/log/apt/term.log"]},
    indent=2,
) + "\n"

_GUEST_AGENT_UNIT = f"""\
[Unit]
Description=Somnus in-guest agent
After=somnus-seed.service network.target
Wants=somnus-seed.service
ConditionPathExists=/etc/somnus/{AGENT_TOKEN_FILE}
ConditionPathExists=/etc/somnus/{AGENT_CERT_FILE}

[Service]
Environment=PYTHONPATH=/{AGENT_GUEST_DIR.rsplit("/", 1)[0]} PYTHONDONTWRITEBYTECODE=1
ExecStart=/usr/bin/python3 -m somnus_agent --listen 0.0.0.0:{AGENT_GUEST_PORT} \\
    --token-file /etc/somnus/{AGENT_TOKEN_FILE} --config /etc/somnus/{AGENT_CONFIG_FILE} \\
    --tls-cert /etc/somnus/{AGENT_CERT_FILE} --tls-key /etc/somnus/{AGENT_KEY_FILE} \\
    --exec-log /var/log/somnus-agent-exec.log
Restart=always
RestartSec=1
# Stop the agent only: monitored processes are its children and go with it.
KillMode=control-group

[Install]
WantedBy=multi-user.target
"""


def _agent_files() -> tuple[tuple[str, str, int], ...]:
    """The agent's modules as image files: their content is part of the recipe hash."""
    return tuple(
        (f"{AGENT_GUEST_DIR}/{module.name}", module.read_text(), 0o644)
        for module in sorted(AGENT_SOURCE.glob("*.py"))
    )


@dataclass(frozen=True)
class DebianRecipe:
    """Inputs of a debian-12 build; their hash keys the cache.

    The build host's apt sources and the addresses of their hosts also go into
    the image, but not into the hash: they are recorded in recipe.json.
    """

    recipe_version: int = 1
    suite: str = rootfs.DEBIAN_SUITE
    packages: tuple[str, ...] = (
        "python3", "python3-apt",  # Ansible's interpreter and its apt module
        "openssh-server", "sudo", "ca-certificates",
        "systemd-sysv", "udev", "dbus", "iproute2", "procps",
        "linux-image-cloud-amd64", "initramfs-tools", "zstd", "e2fsprogs",
        "python3-psutil",  # the agent's /stats/basic
    )
    hostname: str = "somnus-debian"
    cmdline: str = f"root=LABEL={ROOT_LABEL} rw console=ttyS0 net.ifnames=0"
    disk_size: str = "4G"
    files: tuple[tuple[str, str, int], ...] = (  # (path in the guest, content, mode)
        ("etc/resolv.conf", rootfs.GUEST_RESOLV_CONF, 0o644),
        ("etc/fstab", _GUEST_FSTAB, 0o644),
        ("etc/ssh/sshd_config.d/somnus.conf", _GUEST_SSHD_CONFIG, 0o644),
        ("etc/systemd/network/20-somnus-dhcp.network", _GUEST_NETWORK, 0o644),
        ("etc/systemd/system/somnus-ssh-hostkey.service", _GUEST_HOSTKEY_UNIT, 0o644),
        ("etc/systemd/system/somnus-seed.service", _GUEST_SEED_UNIT, 0o644),
        ("etc/systemd/system/somnus-ready.service", _GUEST_READY_UNIT, 0o644),
        ("usr/local/sbin/somnus-seed", _GUEST_SEED_SCRIPT, 0o755),
        ("etc/initramfs-tools/conf.d/somnus.conf", _GUEST_INITRAMFS_CONF, 0o644),
        ("etc/machine-id", "", 0o444),  # empty: each guest makes its own at first boot
        ("etc/systemd/system/somnus-agent.service", _GUEST_AGENT_UNIT, 0o644),
        (f"etc/somnus/{AGENT_CONFIG_FILE}", _GUEST_AGENT_CONFIG, 0o600),
    )
    agent_files: tuple[tuple[str, str, int], ...] = field(default_factory=_agent_files)
    enable: tuple[str, ...] = (
        "systemd-networkd.service", "somnus-ssh-hostkey.service", "somnus-seed.service",
        "somnus-ready.service", "serial-getty@ttyS0.service", "somnus-agent.service",
    )
    # Background apt runs would hold the dpkg lock when Ansible wants it.
    mask: tuple[str, ...] = ("apt-daily.timer", "apt-daily-upgrade.timer")
    default_target: str = "graphical.target"

    def as_json(self) -> dict[str, object]:
        return {
            "recipe_version": self.recipe_version,
            "suite": self.suite,
            "packages": list(self.packages),
            "hostname": self.hostname,
            "cmdline": self.cmdline,
            "disk_size": self.disk_size,
            "files": [[path, content, mode] for path, content, mode in self.files + self.agent_files],
            "enable": list(self.enable),
            "mask": list(self.mask),
            "default_target": self.default_target,
        }

    def digest(self) -> str:
        canonical = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def build(recipe: DebianRecipe, name: str, out: Path, images_dir: Path, log: store.Log) -> None:
    """Build the image into the staging directory `out`, its recipe.json last.

    The debootstrapped tree is cached in `images_dir` (see `rootfs.debootstrap_rootfs`).
    """
    sources = rootfs.host_apt_sources()
    mirror = rootfs.debian_mirror(recipe.suite, sources)
    debootstrapped = rootfs.debootstrap_rootfs(recipe.packages, images_dir, log, suite=recipe.suite, mirror=mirror)
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as tmp:
        work = Path(tmp)
        root = work / "root"
        log(f"{name}: configuring a copy of {debootstrapped}")
        store.run(["cp", "-a", "--reflink=auto", str(debootstrapped), str(root)], what="copy the root filesystem")
        guest_sources = [s for s in sources if rootfs.is_for_guest(s, recipe.suite, root)]
        hosts_lines = rootfs.host_address_lines(sorted({h for s in guest_sources for h in s.hostnames()}))
        _configure_debian(recipe, root, guest_sources, hosts_lines)
        kernel, initrd = _boot_files(root)
        shutil.copyfile(kernel, out / store.KERNEL_FILE)
        shutil.copyfile(initrd, out / store.INITRD_FILE)
        raw = work / "disk.raw"
        log(f"{name}: making the {recipe.disk_size} root file system and converting it to qcow2")
        store.run(
            ["mkfs.ext4", "-q", "-L", ROOT_LABEL, "-d", str(root), str(raw), recipe.disk_size],
            what="make the root file system",
        )
        store.run(
            ["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / store.DISK_FILE)],
            what="convert to qcow2",
        )
        kernel_release = kernel.name.removeprefix("vmlinuz-")
    built = {
        "name": name,
        "recipe_hash": recipe.digest(),
        "recipe": recipe.as_json(),
        "built": {
            "rootfs": str(debootstrapped),
            "mirror": mirror,
            "apt_sources": [s.deb822() for s in guest_sources],
            "hosts_lines": list(hosts_lines),
            "kernel_release": kernel_release,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    (out / store.RECIPE_FILE).write_text(json.dumps(built, indent=2, sort_keys=True) + "\n")
    store.make_readable(out)


def _configure_debian(
    recipe: DebianRecipe, root: Path, sources: Sequence[rootfs.AptSource], hosts_lines: Sequence[str]
) -> None:
    for relative, content, mode in recipe.files + recipe.agent_files:
        _write_guest_file(root, relative, content, mode)
    _write_guest_file(root, "etc/hostname", f"{recipe.hostname}\n", 0o644)
    hosts = [
        "127.0.0.1\tlocalhost",
        f"127.0.1.1\t{recipe.hostname}",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "# The build host's addresses of its package mirrors (see somnus_reconciler/images/rootfs.py).",
        *hosts_lines,
    ]
    _write_guest_file(root, "etc/hosts", "\n".join(hosts) + "\n", 0o644)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    apt_sources = "\n".join(s.deb822() for s in sources)
    _write_guest_file(root, "etc/apt/sources.list.d/somnus-host.sources", apt_sources, 0o644)
    for host_key in (root / "etc/ssh").glob("ssh_host_*"):
        host_key.unlink()
    shadow = (root / "etc/shadow").read_text()
    root_hash = next((line.split(":")[1] for line in shadow.splitlines() if line.startswith("root:")), "")
    if not root_hash.startswith(("*", "!")):
        raise store.ImageError("the debootstrapped root account has a password; the recipe allows none")
    chroot = ["chroot", str(root), "systemctl"]
    store.run([*chroot, "enable", *recipe.enable], what="enable the guest's services")
    store.run([*chroot, "mask", *recipe.mask], what="mask the guest's apt timers")
    store.run([*chroot, "set-default", recipe.default_target], what="set the guest's default target")
    # Again, with the recipe's initramfs settings (see _GUEST_INITRAMFS_CONF).
    store.run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"], what="remake the guest's initramfs")


def _write_guest_file(root: Path, relative: str, content: str, mode: int) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # never write through a symlink debootstrap left
    path.write_text(content)
    os.chmod(path, mode)


def _boot_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise store.ImageError(f"expected one /boot/vmlinuz-* in the guest, found {len(kernels)}")
    initrd = root / "boot" / f"initrd.img-{kernels[0].name.removeprefix('vmlinuz-')}"
    if not initrd.is_file():
        raise store.ImageError(f"the guest has no {initrd.relative_to(root)}: did initramfs-tools run?")
    return kernels[0], initrd
