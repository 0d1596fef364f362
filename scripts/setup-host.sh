#!/usr/bin/env bash
# Prepare a Debian 12 host (as root, no systemd needed) to run Somnus for real:
# install libvirt/QEMU/Docker and the image-build tools, start virtlogd,
# libvirtd and dockerd unless they already run, and wait until both daemons
# answer. Idempotent: on a prepared host it installs nothing and starts nothing.
#
# It never starts libvirt's default NAT network (virbr0): Somnus guests use
# QEMU user-mode networking with port forwards bound to 127.0.0.1.
set -euo pipefail

readonly LIBVIRT_URI="qemu:///system"
readonly DOCKERD_LOG="/var/log/somnus-dockerd.log"
readonly READY_TIMEOUT_S=30
readonly PACKAGES=(
    # libvirt + QEMU, and the headers the libvirt-python wheel builds against
    libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils libvirt-dev pkg-config
    # xmllint, which libvirt-clients' virt-xml-validate runs (the tests validate domain XML with it)
    libxml2-utils
    # Docker (daemon and CLI)
    docker.io
    # VM image builds (somnus_reconciler/tiny_linux.py): apt-get download + dpkg-deb
    # come with apt/dpkg; busybox and cpio for hand-made initramfs work; zstd for
    # kernels whose modules are .ko.zst
    busybox-static cpio zstd
    # VM backups and restores (somnus_reconciler/providers/vm_backups.py): full and
    # incremental through libvirt checkpoints and NBD
    virtnbdbackup
    # Secrets: the age CLI, which reads the values somnus writes (tests/unit/test_secret_values.py)
    age
    # Debian guest and container images (debootstrap, mkfs.ext4 -d), guest SSH
    debootstrap e2fsprogs openssh-client
    # Python environment and building wheels
    python3-venv python3-dev gcc ca-certificates git
    # pgrep, used below
    procps
    # the dashboard's browser tests (Playwright cannot download its own browsers here)
    chromium
    # the test suite run under load on purpose (`--under-load`, testkit/machine_load.py)
    stress-ng
)

say() { printf 'setup-host: %s\n' "$*"; }
die() { printf 'setup-host: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root"

install_packages() {
    say "apt-get update"
    apt-get update -qq
    say "installing ${#PACKAGES[@]} packages (already installed ones are kept)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

# What udev does on a normal Debian host. Without it /dev/kvm stays root-only,
# libvirt finds KVM in its capability probe but "not usable" afterwards, and
# re-probes QEMU on every call (a define then takes seconds to minutes).
# Domains still use type 'qemu' (TCG): nested KVM hangs guests here.
fix_kvm_device_permissions() {
    [[ -c /dev/kvm ]] || return 0
    if [[ $(stat -c '%G %a' /dev/kvm) != "kvm 660" ]]; then
        say "giving /dev/kvm to group kvm, mode 0660 (as udev would)"
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
    fi
}

# Debian's package marks the default network autostart; libvirtd would start
# virbr0 (192.168.122.0/24) at its next start.
keep_default_network_down() {
    local link=/etc/libvirt/qemu/networks/autostart/default.xml
    if [[ -L $link || -e $link ]]; then
        say "disabling autostart of libvirt's default network"
        rm -f "$link"
    fi
}

start_daemons() {
    if pgrep -x virtlogd >/dev/null; then
        say "virtlogd already running"
    else
        say "starting virtlogd"
        /usr/sbin/virtlogd -d
    fi
    if pgrep -x libvirtd >/dev/null; then
        say "libvirtd already running"
    else
        say "starting libvirtd"
        /usr/sbin/libvirtd -d
    fi
    if pgrep -x dockerd >/dev/null; then
        say "dockerd already running"
    else
        say "starting dockerd (log: $DOCKERD_LOG)"
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
}

wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            "$@" || true
            die "$what did not answer within ${READY_TIMEOUT_S} s ($*)"
        fi
        sleep 1
    done
    say "$what answers"
}

warn_if_default_network_active() {
    if virsh -c "$LIBVIRT_URI" net-info default 2>/dev/null | grep -qE '^Active:\s+yes'; then
        say "WARNING: libvirt's default network is active; Somnus must not send traffic to it"
    fi
}

install_packages
fix_kvm_device_permissions
keep_default_network_down
start_daemons
wait_for "libvirtd ($LIBVIRT_URI)" virsh -c "$LIBVIRT_URI" version
wait_for "dockerd (log: $DOCKERD_LOG)" docker version
warn_if_default_network_active
say "ready"
