"""Resolve references between loaded manifests into the `DesiredState`.

Called on the result of `manifests.loader.load`. Checks what no single document can:
unique names per kind, at most one Pool, VM -> profile, VM/Container -> packs,
pack -> requires (without cycles), pack playbooks on disk (inside the directory of
the manifest that names them), VM image paths inside the allowed roots (the
guest directory's images/ and the Pool's allowedImageRoots). Every problem is
collected and raised together as `InvalidInput`; only a consistent set of
manifests is folded into desired values (profiles into VM resources and GPU, packs
expanded into install order).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.images import vm_images
from somnus_reconciler.manifests.loader import Declared
from somnus_reconciler.values import fields, gpu, model
from somnus_reconciler.values.desired import (
    DEFAULT_POOL,
    DesiredContainer,
    DesiredPack,
    DesiredSecret,
    DesiredState,
    DesiredVm,
    SecretEnv,
    SecretFile,
    VmResources,
)
from somnus_reconciler.values.diagnostics import Diagnostics

M = TypeVar(
    "M", model.ResourceProfile, model.CapabilityPack, model.VirtualMachine, model.Container,
    model.Secret, model.Pool,
)
P = ParamSpec("P")


# Image roots that would open the host's devices or configuration to guests.
_SYSTEM_DIRS = tuple(Path(p) for p in ("/dev", "/proc", "/sys", "/etc", "/boot", "/run"))
# Written as root: the programs' directories too.
_NOT_FOR_BACKUPS = _SYSTEM_DIRS + tuple(Path(p) for p in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/var/lib/dpkg"))


def resolve(declared: Sequence[Declared], *, images_dir: Path | None = None) -> DesiredState:
    """`images_dir`: the guest directory's images/, always an allowed image root
    (default: where the environment puts it, `settings.resolve`)."""
    diagnostics = Diagnostics()
    unique = _unique(declared, diagnostics)
    profiles = _of_kind(unique, model.ResourceProfile)
    packs = _of_kind(unique, model.CapabilityPack)
    vms = _of_kind(unique, model.VirtualMachine)
    containers = _of_kind(unique, model.Container)
    secrets = _of_kind(unique, model.Secret)
    pools = list(_of_kind(unique, model.Pool).values())

    for extra, _ in pools[1:]:
        first = pools[0][0]
        diagnostics.add(extra.source, extra.address,
                        f"only one Pool may be declared; {first.address} is declared at {first.source}")
    image_roots = [images_dir if images_dir is not None else settings_mod.resolve().images_dir]
    if pools:
        image_roots += _check_image_roots(*pools[0], diagnostics)
    for d, policy in [(d, p.spec.backup) for d, p in pools[:1]] + [(d, vm.spec.backup) for d, vm in vms.values()]:
        if policy is not None and policy.dir is not None:
            _check_backup_dir(d, policy.dir, diagnostics)
    for d, vm in vms.values():
        _check_vm(d, vm, profiles, image_roots, diagnostics)
    wanted = [(d, vm.spec.packs) for d, vm in vms.values()]
    wanted += [(d, c.spec.packs) for d, c in containers.values()]
    for d, names in wanted:
        _check_reference(d, "spec.packs", names, "pack", packs, diagnostics)
    for d, vm in vms.values():
        _check_secret_refs(d, vm, secrets, diagnostics)
    for d, container in containers.values():
        _check_secret_refs(d, container, secrets, diagnostics)
    for d, pack in packs.values():
        _check_reference(d, "spec.requires", pack.spec.requires, "pack", packs, diagnostics)
        _check_playbook(d, pack.spec.playbook, diagnostics)
    _check_cycles(packs, diagnostics)
    diagnostics.raise_if_any()

    requires = {name: pack.spec.requires for name, (_, pack) in packs.items()}
    pool = pools[0] if pools else None
    scope = pool[1].metadata.name if pool else DEFAULT_POOL
    return DesiredState(
        vms={name: _desired_vm(d, vm, profiles, requires, scope, pool[1].spec.backup if pool else None)
             for name, (d, vm) in vms.items()},
        containers={
            name: _desired_container(d, c, requires, scope) for name, (d, c) in containers.items()
        },
        packs={name: DesiredPack(name, pack.spec, d.source) for name, (d, pack) in packs.items()},
        secrets={name: _desired_secret(d, secret) for name, (d, secret) in secrets.items()},
        pool=pool[1].spec if pool else model.PoolSpec(),
        pool_source=pool[0].source if pool else None,
        pool_name=pool[1].metadata.name if pool else None,
    )


def _check_vm(d: Declared, vm: model.VirtualMachine, profiles: Mapping[str, object], image_roots: list[Path],
              diagnostics: Diagnostics) -> None:
    if vm.spec.profile is not None:
        _check_reference(d, "spec.profile", [vm.spec.profile], "profile", profiles, diagnostics)
    problem = _unresolvable(vm_images.path_problem, vm.spec.image, image_roots)
    if problem is not None:
        diagnostics.add(d.source_of("spec.image"), d.address, f"spec.image: {problem}")
    if vm.spec.packs and not vm_images.guest_services(vm.spec.image).ssh:
        diagnostics.add(d.source_of("spec.packs"), d.address,
                        f"spec.packs: image {vm.spec.image!r} carries no SSH server that takes somnus's key, "
                        "so no pack can be installed in it (packs need a VM of debian-12, or a container)")


def _desired_secret(d: Declared, secret: model.Secret) -> DesiredSecret:
    spec = secret.spec
    return DesiredSecret(secret.metadata.name, tuple(spec.recipients), tuple(sorted(spec.data.items())), d.source,
                         tuple((key, d.source_of(f"spec.data.{key}")) for key in spec.data))


def _unique(declared: Iterable[Declared], diagnostics: Diagnostics) -> list[Declared]:
    """The first declaration of each kind/name; later ones are reported."""
    first: dict[str, Declared] = {}
    for d in declared:
        earlier = first.setdefault(d.address, d)
        if earlier is not d:
            diagnostics.add(d.source, d.address, f"declared twice: also at {earlier.source}")
    return list(first.values())


def _of_kind(declared: Iterable[Declared], kind: type[M]) -> dict[str, tuple[Declared, M]]:
    found: dict[str, tuple[Declared, M]] = {}
    for d in declared:
        if isinstance(d.manifest, kind):
            found[d.manifest.metadata.name] = (d, d.manifest)
    return found


def _check_reference(
    d: Declared, path: str, names: Sequence[str], what: str, known: Mapping[str, object],
    diagnostics: Diagnostics,
) -> None:
    for index, name in enumerate(names):
        if name in known:
            continue
        field = path if path == "spec.profile" or what == "secret" else f"{path}[{index}]"
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        kind = {"profile": "ResourceProfile", "secret": "Secret"}.get(what, "CapabilityPack")
        diagnostics.add(d.source_of(field), d.address,
                        f"{field}: {what} {name!r} is not declared (no {kind} of that name){hint}")


def _check_playbook(d: Declared, playbook: str | None, diagnostics: Diagnostics) -> None:
    """A playbook lives beside or below the manifest that names it, never elsewhere."""
    if playbook is None:
        return
    where = d.source_of("spec.playbook")
    problem = _unresolvable(_playbook_problem, d, playbook)
    if problem is not None:
        diagnostics.add(where, d.address, f"spec.playbook: {playbook!r} {problem}")


def _playbook_problem(d: Declared, playbook: str) -> str | None:
    base = d.source.file.parent.resolve()
    target = (base / playbook).resolve()
    if Path(playbook).is_absolute():
        return "must be a path relative to this manifest's directory"
    if not target.is_relative_to(base):
        return f"leads outside {d.source.file.parent}, the directory of this manifest"
    if not target.is_file():
        return f"does not exist (looked for {target})"
    if any(marker in str(target) for marker in fields.TEMPLATE_MARKERS):
        # Ansible gets the absolute path and templates it on the host.
        return f"resolves to {target}, whose directories hold a template marker Ansible would evaluate"
    return None


def _unresolvable(check: Callable[P, str | None], *args: P.args, **kwargs: P.kwargs) -> str | None:
    """`check`'s problem with a path from a manifest, or why the path cannot even be
    looked at: a name too long for the file system (OSError), a symbolic link loop or
    `~user` of no such user (RuntimeError)."""
    try:
        return check(*args, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        return f"cannot be resolved: {e}"


def _outside_system(raw: str, system: tuple[Path, ...], otherwise: str) -> Path | str:
    """`raw` with its links resolved, when it lies outside the root and the `system`
    directories; else the problem (`otherwise` says what such a directory would do)."""
    try:
        resolved = Path(raw).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as e:  # as in _unresolvable
        return f"{raw!r} cannot be resolved: {e}"
    if resolved == Path("/") or any(resolved.is_relative_to(p) for p in system):
        via = f" (it resolves to {resolved})" if str(resolved) != raw else ""
        return f"{raw!r}{via} {otherwise}"
    return resolved


def _check_image_roots(d: Declared, pool: model.Pool, diagnostics: Diagnostics) -> list[Path]:
    """The Pool's allowedImageRoots that may be used; the root of the file system and
    system directories (after resolving links) are refused."""
    allowed: list[Path] = []
    for index, root in enumerate(pool.spec.allowed_image_roots):
        field = f"spec.allowedImageRoots[{index}]"
        checked = _outside_system(root, _SYSTEM_DIRS, "would open the host's system files to guests; "
                                                      "name a directory that holds images only")
        if isinstance(checked, Path):
            allowed.append(checked)
        else:
            diagnostics.add(d.source_of(field), d.address, f"{field}: {checked}")
    return allowed


def _check_backup_dir(d: Declared, directory: str, diagnostics: Diagnostics) -> None:
    """A backup directory is written as root, so it may not be (in) a system directory."""
    checked = _outside_system(directory, _NOT_FOR_BACKUPS, "is a system directory; name one that holds backups only")
    if isinstance(checked, str):
        diagnostics.add(d.source_of("spec.backup.dir"), d.address, f"spec.backup.dir: {checked}")


def _check_secret_refs(d: Declared, guest: model.VirtualMachine | model.Container,
                       secrets: dict[str, tuple[Declared, model.Secret]], diagnostics: Diagnostics) -> None:
    """Each `env` entry and file taken from a Secret names a declared Secret and one of its keys."""
    refs = [(f"spec.files[{index}].secretRef", file.secret_ref) for index, file in enumerate(guest.spec.files)]
    if isinstance(guest, model.Container):
        refs += [(f"spec.env.{variable}.secretRef", value.secret_ref) for variable, value in guest.spec.env.items()
                 if isinstance(value, model.FromSecret)]
    for field, ref in refs:
        if ref.name not in secrets:
            _check_reference(d, f"{field}.name", [ref.name], "secret", secrets, diagnostics)
        elif ref.key not in secrets[ref.name][1].spec.data:
            keys = ", ".join(sorted(secrets[ref.name][1].spec.data)) or "none"
            diagnostics.add(d.source_of(f"{field}.key"), d.address,
                            f"{field}.key: secret/{ref.name} has no key {ref.key!r} (its keys: {keys})")


def _check_cycles(
    packs: dict[str, tuple[Declared, model.CapabilityPack]], diagnostics: Diagnostics
) -> None:
    """Report every cycle in `requires` once, at the pack where the search meets it.

    Depth-first with an explicit stack: a chain of a few thousand packs would
    overflow Python's recursion limit."""
    done: set[str] = set()
    reported: set[frozenset[str]] = set()
    for root in packs:
        if root in done:
            continue
        chain = [root]  # the packs being searched, each requiring the next
        position = {root: 0}  # pack -> its index in chain
        pending = [iter(packs[root][1].spec.requires)]
        while pending:
            required = next(pending[-1], None)
            if required is None:
                finished = chain.pop()
                del position[finished]
                done.add(finished)
                pending.pop()
                continue
            if required in position:
                _report_cycle(chain[position[required]:] + [required], packs, reported, diagnostics)
            elif required not in done and required in packs:
                position[required] = len(chain)
                chain.append(required)
                pending.append(iter(packs[required][1].spec.requires))


def _report_cycle(
    cycle: list[str], packs: dict[str, tuple[Declared, model.CapabilityPack]],
    reported: set[frozenset[str]], diagnostics: Diagnostics,
) -> None:
    if frozenset(cycle) in reported:
        return
    reported.add(frozenset(cycle))
    d, pack = packs[cycle[0]]
    line = d.source_of(f"spec.requires[{pack.spec.requires.index(cycle[1])}]")
    chain = " -> ".join(f"pack/{n}" for n in cycle)
    diagnostics.add(line, d.address, f"spec.requires: requirements form a cycle: {chain}")


def _install_order(names: Iterable[str], requires: dict[str, list[str]]) -> tuple[str, ...]:
    """Depth-first in declared order, requirements before the packs needing them, each once.

    With an explicit stack, as in _check_cycles; cycles were refused before."""
    order: dict[str, None] = {}  # an ordered set
    for name in names:
        entered = {name}
        stack = [(name, iter(requires.get(name, [])))]
        while stack:
            current, pending = stack[-1]
            required = next(pending, None)
            if required is None:
                stack.pop()
                order.setdefault(current)
            elif required not in order and required not in entered:
                entered.add(required)
                stack.append((required, iter(requires.get(required, []))))
    return tuple(order)


def _desired_vm(
    d: Declared, vm: model.VirtualMachine,
    profiles: dict[str, tuple[Declared, model.ResourceProfile]], requires: dict[str, list[str]],
    pool: str, pool_backup: model.BackupPolicy | None,
) -> DesiredVm:
    spec = vm.spec
    r = profiles[spec.profile][1].spec if spec.profile is not None else spec.resources
    assert r is not None  # the model requires exactly one of profile and resources
    return DesiredVm(
        name=vm.metadata.name,
        resources=VmResources(
            vcpus=r.vcpus,
            memory=r.memory,
            max_vcpus=r.max_vcpus if r.max_vcpus is not None else r.vcpus,
            max_memory=r.max_memory if r.max_memory is not None else r.memory,
        ),
        image=spec.image,
        disk_size=spec.disk_size,
        os_family=spec.os_family,
        running=spec.running,
        packs=_install_order(spec.packs, requires),
        snapshot_retain=spec.snapshots.retain,
        owner=vm.metadata.labels.get("owner"),
        profile=spec.profile,
        source=d.source,
        pool=pool,
        drift_policy=spec.drift_policy,
        backup=spec.backup if spec.backup is not None else pool_backup,
        secret_files=_secret_files(spec.files),
        gpu=gpu.passthrough_of(r.gpu),
        gpu_source=d.source_of("spec.profile" if spec.profile is not None else "spec.resources.gpu"),
    )


def _desired_container(
    d: Declared, container: model.Container, requires: dict[str, list[str]], pool: str,
) -> DesiredContainer:
    spec = container.spec
    return DesiredContainer(
        name=container.metadata.name,
        image=spec.image,
        command=tuple(spec.command) if spec.command is not None else None,
        cpus=spec.resources.cpus,
        memory=spec.resources.memory,
        network=spec.network,
        env=tuple(sorted((k, v) for k, v in spec.env.items() if isinstance(v, str))),
        packs=_install_order(spec.packs, requires),
        owner=container.metadata.labels.get("owner"),
        source=d.source,
        pool=pool,
        drift_policy=spec.drift_policy,
        volumes=tuple((v.name, v.mount_path) for v in spec.volumes),
        secret_env=tuple(SecretEnv(k, v.secret_ref.name, v.secret_ref.key)
                         for k, v in sorted(spec.env.items()) if isinstance(v, model.FromSecret)),
        secret_files=_secret_files(spec.files),
        gpu=gpu.device_request_of(spec.resources.gpu),
        gpu_source=d.source_of("spec.resources.gpu"),
    )


def _secret_files(files: list[model.SecretFile]) -> tuple[SecretFile, ...]:
    return tuple(SecretFile(f.path, f.secret_ref.name, f.secret_ref.key, int(f.mode, 8), f.owner) for f in files)
