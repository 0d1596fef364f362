"""A hermetic apt repository for pack tests: .deb packages built with dpkg-deb,
a flat index, and a playbook that makes it a guest's only apt source.

Used by tests/integration/test_ansible_packs.py, test_pack_steps.py and bench/packs.py.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from email.utils import formatdate
from pathlib import Path

import yaml

GUEST_REPO = "/opt/somnus-local-repo"

DEBS: dict[str, tuple[dict[str, str], dict[str, tuple[int, str]], dict[str, str]]] = {
    "somnus-hello": (
        {"Description": "prints hello"},
        {"usr/bin/somnus-hello": (0o755, "#!/bin/sh\necho hello\n")},
        {},
    ),
    "somnus-broken": (
        {"Description": "a package whose postinst fails"},
        {"usr/share/doc/somnus-broken/README": (0o644, "broken on purpose\n")},
        {"postinst": "#!/bin/sh\necho 'somnus-broken: postinst fails on purpose' >&2\nexit 1\n"},
    ),
}


# -- the local apt repository -------------------------------------------------

def build_deb(name: str, out_dir: Path, work: Path) -> Path:
    fields, files, scripts = DEBS[name]
    root = work / name
    (root / "DEBIAN").mkdir(parents=True)
    control = {"Package": name, "Version": "1.0", "Architecture": "all",
               "Maintainer": "Somnus tests <tests@somnus.invalid>", **fields}
    (root / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    for script, text in scripts.items():
        path = root / "DEBIAN" / script
        path.write_text(text)
        path.chmod(0o755)
    for rel, (mode, text) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    deb = out_dir / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def write_index(repo: Path) -> None:
    """A flat repository: Packages(.gz) and a Release listing their checksums.

    Written here rather than with dpkg-scanpackages, so the host needs dpkg-deb only.
    """
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        control = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True,
                                 capture_output=True, text=True).stdout.strip()
        data = deb.read_bytes()
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages))
    sums = "".join(f" {hashlib.sha256((repo / n).read_bytes()).hexdigest()} {(repo / n).stat().st_size} {n}\n"
                   for n in ("Packages", "Packages.gz"))
    (repo / "Release").write_text(
        f"Origin: somnus-tests\nLabel: somnus-tests\nSuite: local\nCodename: local\n"
        f"Date: {formatdate(usegmt=True)}\nSHA256:\n{sums}")


def build_local_repo(repo: Path, work: Path) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    for name in DEBS:
        build_deb(name, repo, work)
    write_index(repo)
    return repo


def write_local_repo_playbook(path: Path, local_repo: Path) -> None:
    """The `local-repo` pack's own playbook: copy the repository in, use nothing else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump([{
        "name": "A local apt repository, the guest's only source",
        "hosts": "all",
        "gather_facts": False,
        "tasks": [
            {"name": "Copy the repository into the guest",
             "ansible.builtin.copy": {"src": f"{local_repo}/", "dest": f"{GUEST_REPO}/",
                                      "mode": "0644", "directory_mode": "0755"}},
            # The container has no network: the mirrors would only make apt fail.
            {"name": "Set the network sources aside",
             "ansible.builtin.shell": (
                 "changed=no\n"
                 "for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list "
                 "/etc/apt/sources.list.d/*.sources; do\n"
                 "  case $f in */somnus-local-repo.list) continue;; esac\n"
                 "  if [ -e \"$f\" ]; then mv \"$f\" \"$f.disabled\"; changed=yes; fi\n"
                 "done\necho $changed\n"),
             "register": "aside", "changed_when": "aside.stdout == 'yes'"},
            {"name": "Point apt at the local repository",
             "ansible.builtin.copy": {"dest": "/etc/apt/sources.list.d/somnus-local-repo.list",
                                      "content": f"deb [trusted=yes] file:{GUEST_REPO} ./\n"}},
            {"name": "Refresh the apt cache", "ansible.builtin.apt": {"update_cache": True}},
        ],
    }], sort_keys=False))
