"""Debian root file systems made by debootstrap, and the build host's apt sources they come from.

`debian_image` (the debian-12 VM recipe) and `container_images` (the
somnus/base:bookworm container image) call `debootstrap_rootfs`, which caches
each tree by its inputs so every recipe debootstraps once. The mirror is the
host's (`host_apt_sources`, `debian_mirror`); `debian_image` also copies the
host's entries for the guest's release (`is_for_guest`) and the host's
addresses of their hosts (`host_address_lines`) into the guest, because a
guest's DNS through QEMU user-mode networking cannot be relied on (nor used:
it would send the host's traffic to its nameserver).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.images import store

DEBIAN_SUITE = "bookworm"

# The first file the root filesystem holds besides what debootstrap made: the
# guest resolves the package registries through its /etc/hosts (see
# `host_address_lines`), never through a nameserver, so there is none. The
# debian-12 recipe lists it among its files too, so it is in that recipe's hash.
GUEST_RESOLV_CONF = """\
# No nameserver: Somnus guests find their package mirrors through /etc/hosts.
# A nameserver reached through QEMU user-mode networking would be the host's.
"""

_DEBOOTSTRAP_VARIANT = "minbase"
_ROOTFS_VERSION = 1  # bump when debootstrap_rootfs changes what it makes


@dataclass(frozen=True)
class AptSource:
    """One entry of the host's apt sources, in either file format."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None

    def hostnames(self) -> tuple[str, ...]:
        names = (re.match(r"[a-z+]+://([^/:@]+)", uri) for uri in self.uris)
        return tuple(m.group(1) for m in names if m is not None)

    def deb822(self) -> str:
        lines = [
            f"Types: {' '.join(self.types)}",
            f"URIs: {' '.join(self.uris)}",
            f"Suites: {' '.join(self.suites)}",
            f"Components: {' '.join(self.components)}",
        ]
        if self.signed_by is not None:
            lines.append(f"Signed-By: {self.signed_by}")
        return "\n".join(lines) + "\n"


def host_apt_sources(apt_dir: Path = Path("/etc/apt")) -> tuple[AptSource, ...]:
    """The entries apt on this host reads: sources.list and sources.list.d/*.{list,sources}."""
    found: list[AptSource] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in files:
        if path.is_file():
            found.extend(_one_line_sources(path.read_text()))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        found.extend(_deb822_sources(path.read_text()))
    return tuple(found)


def _one_line_sources(text: str) -> list[AptSource]:
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.fullmatch(r"(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
        if match is None:
            continue
        options = dict(o.split("=", 1) for o in (match.group(2) or "").split() if "=" in o)
        found.append(AptSource(
            types=(match.group(1),),
            uris=(match.group(3),),
            suites=(match.group(4),),
            components=tuple(match.group(5).split()),
            signed_by=options.get("signed-by"),
        ))
    return found


def _deb822_sources(text: str) -> list[AptSource]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key:
                fields[key] += " " + raw.strip()
            elif ":" in raw:
                key, value = raw.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or not fields.get("uris"):
            continue
        found.append(AptSource(
            types=tuple(fields.get("types", "deb").split()),
            uris=tuple(fields["uris"].split()),
            suites=tuple(fields.get("suites", "").split()),
            components=tuple(fields.get("components", "").split()),
            signed_by=fields.get("signed-by"),
        ))
    return found


def debian_mirror(suite: str, sources: Sequence[AptSource]) -> str:
    """The host's mirror of Debian `suite` (main): what debootstrap fetches from."""
    for source in sources:
        if "deb" in source.types and suite in source.suites and "main" in source.components:
            return source.uris[0]
    raise store.ImageError(
        f"the host's apt sources have no 'deb' entry for suite {suite} with component main; "
        f"add one to /etc/apt/sources.list.d/"
    )


def is_for_guest(source: AptSource, suite: str, root: Path) -> bool:
    """Entries of the guest's release whose keyring the guest has too."""
    of_release = all(s == suite or s.startswith(f"{suite}-") for s in source.suites)
    keyring_ok = source.signed_by is None or (
        source.signed_by.startswith("/") and (root / source.signed_by.lstrip("/")).is_file()
    )
    return "deb" in source.types and of_release and keyring_ok


def host_address_lines(hostnames: Sequence[str], hosts_file: Path = Path("/etc/hosts")) -> tuple[str, ...]:
    """/etc/hosts lines for `hostnames` as this host resolves them.

    A name in the host's /etc/hosts is copied from there; any other is
    resolved with the host's resolver (getaddrinfo, IPv4). A name that does
    not resolve is left out: the guest's apt will say so when it needs it.
    """
    listed: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for raw in hosts_file.read_text().splitlines():
            fields = raw.split("#", 1)[0].split()
            for name in fields[1:]:
                listed.setdefault(name, fields[0])
    lines = []
    for name in hostnames:
        address = listed.get(name)
        if address is None:
            with contextlib.suppress(OSError):
                infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
                address = str(infos[0][4][0]) if infos else None
        if address is not None:
            lines.append(f"{address}\t{name}")
    return tuple(lines)


def debootstrap_rootfs(
    packages: Sequence[str],
    cache_dir: Path,
    log: store.Log,
    *,
    suite: str = DEBIAN_SUITE,
    mirror: str | None = None,
) -> Path:
    """A Debian `suite` root file system (debootstrap minbase plus `packages`).

    Cached in `cache_dir/rootfs-<suite>-<hash>/root`, keyed by the hash of its
    inputs (suite, variant, packages, mirror); so each recipe debootstraps once.
    Callers must not change the tree they get: copy it (`cp -a`) or archive it.
    The host's hostname and resolv.conf that debootstrap copies in, apt's
    lists and the downloaded .debs are removed.
    """
    mirror = mirror or debian_mirror(suite, host_apt_sources())
    wanted = sorted(set(packages))
    inputs: dict[str, object] = {
        "version": _ROOTFS_VERSION,
        "suite": suite,
        "variant": _DEBOOTSTRAP_VARIANT,
        "packages": wanted,
        "mirror": mirror,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    key = f"rootfs-{suite}-{digest}"
    target = cache_dir / key
    if (target / "rootfs.json").is_file():
        return target / "root"
    store.make_dirs(cache_dir)
    with store.build_lock(cache_dir, key):
        if (target / "rootfs.json").is_file():
            return target / "root"  # another process made it meanwhile
        store.remove_stale_staging(cache_dir, key)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.building-", dir=cache_dir))
        try:
            root = staging / "root"
            log(f"{key}: debootstrap {suite} from {mirror} with {' '.join(wanted)}")
            started = time.monotonic()
            argv = [
                "debootstrap", f"--variant={_DEBOOTSTRAP_VARIANT}", f"--include={','.join(wanted)}",
                suite, str(root), mirror,
            ]
            _debootstrap(argv)
            _tidy_rootfs(root)
            seconds = round(time.monotonic() - started, 1)
            record = {**inputs, "debootstrap_seconds": seconds}
            (staging / "rootfs.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            os.chmod(staging, store.DIR_MODE)
            os.rename(staging, target)
        except BaseException:
            _unmount_below(staging)
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"{key}: debootstrapped in {seconds} s")
    return target / "root"


def _debootstrap(argv: Sequence[str]) -> None:
    """Run debootstrap; it reports its errors ("E: ...") on stdout, so both go into the message."""
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", check=False)
    except FileNotFoundError as e:
        raise store.ImageError(
            "cannot debootstrap: debootstrap is not installed (run scripts/setup-host.sh)"
        ) from e
    if result.returncode != 0:
        lines = result.stdout.strip().splitlines()
        errors = [line for line in lines if line.startswith("E:")] or lines[-3:]
        raise store.ImageError(
            f"debootstrap exited {result.returncode}: {' / '.join(errors)} (command: {' '.join(argv)})"
        )


def _tidy_rootfs(root: Path) -> None:
    _unmount_below(root)
    for relative in ("etc/hostname", "etc/resolv.conf"):
        (root / relative).unlink(missing_ok=True)
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/resolv.conf").write_text(GUEST_RESOLV_CONF)
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"):
        for path in root.glob(pattern):
            path.unlink()


def _unmount_below(path: Path) -> None:
    """Unmount what a killed debootstrap left mounted (proc, sys, a bound /dev) under `path`.

    Called before removing a staging tree: removing through a bind mount of the
    host's /dev would delete the host's device nodes.
    """
    prefix = str(path.resolve()) + "/"
    with contextlib.suppress(OSError):
        mountpoints = [
            line.split()[4].encode().decode("unicode_escape")
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ]
        for mountpoint in sorted((m for m in mountpoints if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, check=False)
