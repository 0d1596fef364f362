"""rootfs: reading the host's apt sources and the addresses of their hosts (pure, on files made here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from somnus_reconciler.images import rootfs, store

DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.test/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.test/debian-security
Suites: bookworm-security
Components: main contrib
Enabled: yes

Types: deb
URIs: http://off.test/debian
Suites: bookworm
Components: main
Enabled: no
"""

ONE_LINE = """\
# comment
deb [arch=amd64 signed-by=/etc/apt/keyrings/other.gpg] https://other.test/apt stable main
deb-src http://mirror.test/debian bookworm main
"""


@pytest.fixture
def apt_dir(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "ignored.sources.disabled").write_text(DEB822.replace("mirror", "no"))
    return tmp_path


def test_both_formats_are_read_and_disabled_entries_skipped(apt_dir: Path) -> None:
    sources = rootfs.host_apt_sources(apt_dir)

    assert [s.uris[0] for s in sources] == [
        "https://other.test/apt",
        "http://mirror.test/debian",
        "http://mirror.test/debian",
        "http://mirror.test/debian-security",
    ]
    other, src, debian, security = sources
    assert other.signed_by == "/etc/apt/keyrings/other.gpg" and other.suites == ("stable",)
    assert src.types == ("deb-src",)
    assert debian.suites == ("bookworm", "bookworm-updates")
    assert security.components == ("main", "contrib") and security.signed_by is None


def test_mirror_is_the_first_binary_entry_of_the_suite(apt_dir: Path) -> None:
    assert rootfs.debian_mirror("bookworm", rootfs.host_apt_sources(apt_dir)) == "http://mirror.test/debian"
    with pytest.raises(store.ImageError, match="no 'deb' entry for suite trixie"):
        rootfs.debian_mirror("trixie", rootfs.host_apt_sources(apt_dir))


def test_deb822_round_trip(apt_dir: Path) -> None:
    debian = rootfs.host_apt_sources(apt_dir)[2]
    assert rootfs._deb822_sources(debian.deb822()) == [debian]
    assert debian.hostnames() == ("mirror.test",)


def test_host_lines_come_from_the_hosts_file_first(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.9 mirror.test other.test # mirrors\n")

    lines = rootfs.host_address_lines(["mirror.test", "other.test", "localhost"], hosts)

    assert lines == ("127.0.0.9\tmirror.test", "127.0.0.9\tother.test", "127.0.0.1\tlocalhost")

