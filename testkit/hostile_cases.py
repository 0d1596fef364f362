"""Hostile manifests, each with the message that refuses it.

Shared by tests/unit/test_hostile_manifests.py (every case through `somnus validate`),
tests/integration/test_hostile.py (every case through `somnus apply` against the real
daemons: exit 2, nothing created) and bench/reliability.py (the report's "hostile inputs
tried / refused / created anything").

A case is manifest YAML plus the files it needs beside it (playbooks, symbolic links,
qcow2 headers). `materialize(case, root)` writes them under `root` and returns the
manifest file (`root/manifests/hostile.yaml` unless the case puts it elsewhere); give
its directory to `somnus validate` or `apply`.
In the YAML, in file contents and in link targets, `{root}` stands for `root` and
`{prefix}` for the prefix of every object name (default NAME_PREFIX), so the objects a
run might create are easy to find and remove.

The line that must be named in the refusal carries the comment REFUSED_HERE:
a refusal is `FILE:LINE: kind/name: ...` (SPEC section 4) whose text holds
`case.expected`; `refusal_in(case, manifest_file, stderr)` finds it.

`stage` is the first command that refuses the case: "validate" (schema, references,
admission against host capacity) or "apply" (what only planning knows, such as the
content of an image file a new VM would back onto).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NamedTuple

NAME_PREFIX = "hostile"
REFUSED_HERE = "# refused here"
MANIFEST_FILE = Path("manifests") / "hostile.yaml"

# A qcow2 version 3 header: magic, version, backing file offset, then zeroes up to the
# incompatible feature bits at 72 (bit 2: external data file).
_QCOW2_V3 = b"QFI\xfb" + (3).to_bytes(4, "big")


def _qcow2_header(*, backing_offset: int = 0, incompatible: int = 0) -> bytes:
    header = _QCOW2_V3 + backing_offset.to_bytes(8, "big") + bytes(72 - 16) + incompatible.to_bytes(8, "big")
    return header + bytes(512 - len(header))


class HostileCase(NamedTuple):
    """(description, manifest YAML, expected message fragment), then what it needs."""

    description: str
    manifest: str
    expected: str
    files: Mapping[str, str | bytes] = {}  # path under root -> content
    links: Mapping[str, str] = {}  # path under root -> link target
    stage: Literal["validate", "apply"] = "validate"
    manifest_at: str = str(MANIFEST_FILE)  # where under root the manifest goes


def _vm(image: str = "tiny-linux", *, metadata: str = "", spec: str = "", disk: str = "64Mi",
        resources: str = "{vcpus: 1, memory: 64Mi}", image_mark: str = "", document_mark: str = "") -> str:
    """A VirtualMachine; the marks put REFUSED_HERE on its image line or its first line."""
    return (
        f"apiVersion: somnus/v1  {document_mark}\nkind: VirtualMachine\n"
        f"metadata:\n  name: {{prefix}}-vm\n{metadata}"
        f"spec:\n  resources: {resources}\n  image: {image!r}  {image_mark}\n  diskSize: {disk}\n{spec}"
    )


def _labelled(entry: str) -> str:
    """A VirtualMachine with the one label `entry`, the line to refuse."""
    return _vm(metadata=f"  labels:\n    {entry}  {REFUSED_HERE}\n")


def _container(spec: str = "", *, metadata: str = "", memory: str = "64Mi", document_mark: str = "") -> str:
    return (
        f"apiVersion: somnus/v1  {document_mark}\nkind: Container\n"
        f"metadata:\n  name: {{prefix}}-box\n{metadata}"
        "spec:\n  image: somnus/busybox:latest\n  command: [sleep, infinity]\n"
        f"  resources: {{cpus: 0.25, memory: {memory}}}\n{spec}"
    )


def _container_option(description: str, option: str, value: str) -> HostileCase:
    """A Docker option the Container schema does not have: an unknown field."""
    return HostileCase(description, _container(f"  {option}: {value}  {REFUSED_HERE}\n"),
                       f"spec: unknown field '{option}'")


def _pack(spec: str) -> str:
    return f"apiVersion: somnus/v1\nkind: CapabilityPack\nmetadata:\n  name: {{prefix}}-pack\nspec:\n{spec}"


def _pool(spec: str) -> str:
    return f"apiVersion: somnus/v1\nkind: Pool\nmetadata:\n  name: {{prefix}}-pool\nspec:\n{spec}"


_JINJA_DIR = "manifests/{{ lookup('pipe', 'id') }}"
_OUTSIDE_PLAYBOOK = {"outside.yml": "- hosts: all\n  tasks: []\n"}
_LEGIT_QCOW2 = {"images/standalone.qcow2": _qcow2_header()}
_ALLOW_IMAGES = _pool("  allowedImageRoots: ['{root}/images']\n") + "---\n"


def _image_file_case(description: str, expected: str, header: bytes) -> HostileCase:
    """A VM on a qcow2 file inside an allowed root, refused for what the file holds:
    only planning opens it, so `apply` refuses it at the VM and `validate` does not."""
    return HostileCase(
        description,
        _ALLOW_IMAGES + _vm("{root}/images/suspect.qcow2", document_mark=REFUSED_HERE),
        expected, files={"images/suspect.qcow2": header}, stage="apply",
    )


CASES: tuple[HostileCase, ...] = (
    # --- names and labels that try to break out of the domain XML ------------------
    HostileCase(
        "XML injection in metadata.name",
        "apiVersion: somnus/v1\nkind: VirtualMachine\n"
        f"metadata:\n  name: 'x</name><devices><disk/></devices><name>'  {REFUSED_HERE}\n"
        "spec: {resources: {vcpus: 1, memory: 64Mi}, image: tiny-linux}\n",
        "is not a DNS-1123 label",
    ),
    HostileCase(
        "XML entity in metadata.name",
        "apiVersion: somnus/v1\nkind: Container\n"
        f"metadata:\n  name: '&xxe;'  {REFUSED_HERE}\n"
        "spec: {image: somnus/busybox:latest}\n",
        "is not a DNS-1123 label",
    ),
    HostileCase(
        "XML injection in a label value (the owner ends up in the domain's mark)",
        _labelled("owner: '\"/><devices><disk/></devices>'"),
        "metadata.labels.owner: label value",
    ),
    HostileCase(
        "XML entity reference in a label value",
        _labelled("team: '&xxe;'"),
        "metadata.labels.team: label value '&xxe;' must be empty or at most 63 characters",
    ),
    HostileCase(
        "quotes and a newline in a label value",
        _container(metadata=f"  labels:\n    owner: \"a' b=\\\"c\\\"\\n\"  {REFUSED_HERE}\n"),
        "metadata.labels.owner: label value",
    ),
    HostileCase(
        "label value longer than 63 characters",
        _labelled(f"owner: {'a' * 64}"),
        "must be empty or at most 63 characters",
    ),
    HostileCase(
        "markup in a label key",
        _labelled("'<owner>': alice"),
        "<owner> is not a valid label key",
    ),
    HostileCase(
        "label key prefix that is not a DNS subdomain",
        _labelled("Evil.Example/../owner: alice"),
        "is not a valid label key: its prefix must be a DNS-1123 subdomain",
    ),
    # --- VM image paths outside the allowed roots ------------------------------------
    HostileCase("a block device as VM image", _vm("/dev/sda", image_mark=REFUSED_HERE),
                "spec.image: '/dev/sda' is outside the allowed image roots"),
    HostileCase("a host secret as VM image", _vm("/etc/shadow", image_mark=REFUSED_HERE),
                "spec.image: '/etc/shadow' is outside the allowed image roots"),
    HostileCase("a relative path that climbs to a device",
                _vm("../../../../../../../../dev/sda", image_mark=REFUSED_HERE),
                "(it resolves to /dev/sda)"),
    HostileCase(
        "'..' out of an allowed image root",
        _ALLOW_IMAGES + _vm("{root}/images/../secret.qcow2", image_mark=REFUSED_HERE),
        "is outside the allowed image roots (it resolves to",
        files={"secret.qcow2": _qcow2_header(), **_LEGIT_QCOW2},
    ),
    HostileCase(
        "a symbolic link in an allowed image root pointing at a host file",
        _ALLOW_IMAGES + _vm("{root}/images/link.qcow2", image_mark=REFUSED_HERE),
        "(it resolves to /etc/shadow)",
        files=_LEGIT_QCOW2, links={"images/link.qcow2": "/etc/shadow"},
    ),
    HostileCase(
        "the whole file system as an allowed image root",
        _pool(f"  allowedImageRoots:\n    - /  {REFUSED_HERE}\n"),
        "spec.allowedImageRoots[0]: '/' would open the host's system files",
    ),
    HostileCase(
        "an allowed image root that is a link to /dev",
        _pool(f"  allowedImageRoots:\n    - '{{root}}/devices'  {REFUSED_HERE}\n"),
        "(it resolves to /dev) would open the host's system files",
        links={"devices": "/dev"},
    ),
    HostileCase(
        "a relative allowed image root",
        _pool(f"  allowedImageRoots:\n    - images  {REFUSED_HERE}\n"),
        "spec.allowedImageRoots[0]: 'images' must be an absolute path",
    ),
    _image_file_case("a qcow2 whose backing file QEMU would open unchecked", "has a backing file",
                     _qcow2_header(backing_offset=512)),
    _image_file_case("a qcow2 with an external data file", "keeps its data in an external file",
                     _qcow2_header(incompatible=1 << 2)),
    # --- pack playbooks and strings that reach Ansible --------------------------------
    HostileCase("an absolute playbook path", _pack(f"  playbook: /etc/passwd  {REFUSED_HERE}\n"),
                "spec.playbook: '/etc/passwd' must be a path relative to this manifest's directory"),
    HostileCase("a playbook path that climbs out of the manifest's directory",
                _pack(f"  playbook: ../outside.yml  {REFUSED_HERE}\n"),
                "spec.playbook: '../outside.yml' leads outside", files=_OUTSIDE_PLAYBOOK),
    HostileCase("a playbook that is a link out of the manifest's directory",
                _pack(f"  playbook: extra/link.yml  {REFUSED_HERE}\n"),
                "spec.playbook: 'extra/link.yml' leads outside", files=_OUTSIDE_PLAYBOOK,
                links={"manifests/extra/link.yml": "{root}/outside.yml"}),
    HostileCase(
        "a Jinja lookup in a verify command (Ansible would run it on the host)",
        _pack(f"  verify:\n    - \"echo {{{{ lookup('pipe', 'id') }}}}\"  {REFUSED_HERE}\n"),
        "spec.verify[0]: \"echo {{ lookup('pipe', 'id') }}\" contains a template marker",
    ),
    HostileCase(
        "a playbook in a directory whose name is a Jinja lookup (Ansible gets the absolute path)",
        _pack(f"  playbook: x.yml  {REFUSED_HERE}\n"),
        "whose directories hold a template marker Ansible would evaluate",
        files={f"{_JINJA_DIR}/x.yml": "- hosts: all\n  tasks: []\n"},
        manifest_at=f"{_JINJA_DIR}/hostile.yaml",
    ),
    HostileCase(
        "a Jinja statement in a playbook path",
        _pack(f"  playbook: \"{{% include '/etc/shadow' %}}\"  {REFUSED_HERE}\n"),
        "spec.playbook: ",
    ),
    HostileCase(
        "shell and option injection in a package name",
        _pack(f"  packages:\n    apt:\n      - curl\n      - '-o APT::Update::Pre-Invoke::=id'  {REFUSED_HERE}\n"),
        "spec.packages.apt[1]: package name '-o APT::Update::Pre-Invoke::=id' must start",
    ),
    HostileCase(
        "a Jinja expression in a package name",
        _pack(f"  packages:\n    brew: [\"{{{{ lookup('env', 'HOME') }}}}\"]  {REFUSED_HERE}\n"),
        "spec.packages.brew[0]: package name",
    ),
    # --- container options the schema does not have ----------------------------------
    _container_option("a privileged container", "privileged", "true"),
    HostileCase("a host mount in Docker's words", _container(f"  volumes: ['/:/host']  {REFUSED_HERE}\n"),
                "spec.volumes[0]: expected a mapping, got str '/:/host'"),
    HostileCase("a host path behind a named volume",
                _container(f"  volumes:\n    - {{name: root, mountPath: /host, hostPath: /}}  {REFUSED_HERE}\n"),
                "spec.volumes[0]: unknown field 'hostPath'"),
    _container_option("a host device", "devices", "['/dev/kvm:/dev/kvm']"),
    _container_option("an added capability", "capAdd", "[SYS_ADMIN]"),
    _container_option("a security option", "securityOpt", "['seccomp=unconfined']"),
    _container_option("a port published on every address", "ports", "['0.0.0.0:80:80']"),
    HostileCase("Docker's bridge network", _container(f"  network: bridge  {REFUSED_HERE}\n"),
                "spec.network: 'bridge' is not one of"),
    _container_option("the host's PID namespace", "pid", "host"),
    HostileCase("an env name that sets another variable",
                _container(f"  env:\n    'PATH=/tmp/evil:': x  {REFUSED_HERE}\n"),
                "PATH=/tmp/evil: is not a valid variable name"),
    # --- resources beyond the host ----------------------------------------------------
    HostileCase("100000 vCPUs", _vm(resources="{vcpus: 100000, memory: 64Mi}", document_mark=REFUSED_HERE),
                "running guests need 100000 vCPUs but the host allows"),
    HostileCase("1Pi of memory", _vm(resources="{vcpus: 1, memory: 1Pi}", document_mark=REFUSED_HERE),
                "running guests need 1Pi of memory but the host offers"),
    HostileCase("1Pi of memory for a container", _container(memory="1Pi", document_mark=REFUSED_HERE),
                "running guests need 1Pi of memory but the host offers"),
    HostileCase("a 1Ei disk", _vm(disk="1Ei", spec="  running: false\n", document_mark=REFUSED_HERE),
                "spec.diskSize: 1Ei is more than the whole file system of"),
    # --- a Pool that points libvirt elsewhere -----------------------------------------
    HostileCase("libvirt's ext transport, which runs a command",
                _pool(f"  libvirtUri: 'qemu+ext:///system?command=/tmp/evil'  {REFUSED_HERE}\n"),
                "spec.libvirtUri: 'qemu+ext:///system?command=/tmp/evil' is not a local libvirt URI"),
    HostileCase("a Jinja lookup in the state directory (it reaches Ansible's inventory)",
                _pool(f"  stateDir: \"/tmp/{{{{ lookup('pipe', 'id') }}}}\"  {REFUSED_HERE}\n"),
                "spec.stateDir: \"/tmp/{{ lookup('pipe', 'id') }}\" contains a template marker"),
    HostileCase("a remote libvirt over SSH",
                _pool(f"  libvirtUri: 'qemu+ssh://root@example.invalid/system'  {REFUSED_HERE}\n"),
                "is not a local libvirt URI"),
)


def materialize(case: HostileCase, root: Path, *, prefix: str = NAME_PREFIX) -> Path:
    """Write the case's manifest, files and links under `root`; the manifest file."""
    def fill(text: str) -> str:
        return text.replace("{root}", str(root)).replace("{prefix}", prefix)

    manifest = root / case.manifest_at
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(fill(case.manifest))
    for relative, content in case.files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(fill(content))
    for relative, target in case.links.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(fill(target))
    return manifest


def expected_line(case: HostileCase) -> int:
    """1-based line of the manifest that the refusal must name."""
    [line] = [n for n, text in enumerate(case.manifest.splitlines(), 1) if REFUSED_HERE in text]
    return line


def refusal_in(case: HostileCase, manifest_file: Path, stderr: str) -> str | None:
    """The line of `stderr` that refuses `case` at its place, or None."""
    place = f"{manifest_file}:{expected_line(case)}: "
    return next((line for line in stderr.splitlines() if line.startswith(place) and case.expected in line), None)
