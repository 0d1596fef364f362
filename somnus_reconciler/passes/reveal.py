"""Secret values decrypted for the guests that use them, in memory only.

`prepare.load_desired` calls `reveal_secrets` after resolving references: each
container's `env` from Secrets and each guest's `files` get their values (as
`values.desired.Revealed`, whose repr says which, never what) and keyed digests
(`age_secrets.keyed_digest` with the host's digest key, not the age identity): the
container's `secret_digest` goes into its spec hash, so a new value recreates it; a
file's digest is recorded on the guest and compared by the plan, so a new value
rewrites only that file. A value that does not decrypt is an error at its line.
"""

from __future__ import annotations

import dataclasses

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.providers import age_secrets
from somnus_reconciler.values.desired import (
    DesiredContainer,
    DesiredState,
    DesiredVm,
    GuestFiles,
    Revealed,
    SecretFile,
)
from somnus_reconciler.values.diagnostics import Diagnostic, Diagnostics, InvalidInput


def uses_secrets(desired: DesiredState) -> bool:
    guests: list[DesiredVm | DesiredContainer] = [*desired.vms.values(), *desired.containers.values()]
    return any(g.secret_files for g in guests) or any(c.secret_env for c in desired.containers.values())


def reveal_secrets(desired: DesiredState, settings: settings_mod.Settings) -> DesiredState:
    """Every container's `secret_env` decrypted into `revealed_env` with its keyed
    `secret_digest`, every guest's `secret_files` into `files`; InvalidInput at the
    value's line for any that does not decrypt (and then nothing is planned)."""
    try:
        identity = age_secrets.Identity(settings.age_key_file)
    except age_secrets.SecretError as e:
        raise InvalidInput((Diagnostic(None, None, str(e)),)) from None
    values = _Values(desired, identity)
    key = age_secrets.digest_key(settings.secret_digest_key_file)
    containers = {}
    for name, container in desired.containers.items():
        revealed = tuple((ref.variable, values.get(ref.secret, ref.key)) for ref in container.secret_env)
        digest = age_secrets.keyed_digest(key, ((f"{variable}={value.label}", value.reveal())
                                                for variable, value in revealed)) if revealed else ""
        containers[name] = dataclasses.replace(container, revealed_env=revealed, secret_digest=digest,
                                               files=_files(container.secret_files, values, key))
    vms = {name: dataclasses.replace(vm, files=_files(vm.secret_files, values, key)) for name, vm in desired.vms.items()}
    values.problems.raise_if_any()
    return dataclasses.replace(desired, vms=vms, containers=containers)


def _files(files: tuple[SecretFile, ...], values: _Values, key: bytes) -> GuestFiles:
    revealed = [(f, values.get(f.secret, f.key)) for f in files]
    return GuestFiles(
        digests=tuple((f.path, age_secrets.keyed_digest(key, [(f"{f.path} {f.mode:o} {f.owner}", value.reveal())]))
                      for f, value in revealed),
        values=tuple((f.path, value) for f, value in revealed),
    )


class _Values:
    """Each (secret, key) decrypted once; the ones that do not decrypt are collected as problems."""

    def __init__(self, desired: DesiredState, identity: age_secrets.Identity) -> None:
        self._desired, self._identity = desired, identity
        self._cache: dict[tuple[str, str], Revealed] = {}
        self.problems = Diagnostics()

    def get(self, secret_name: str, key: str) -> Revealed:
        if (secret_name, key) not in self._cache:
            secret = self._desired.secrets[secret_name]
            try:
                value = self._identity.decrypt(dict(secret.data)[key], f"secret/{secret_name} key {key}")
            except age_secrets.SecretError as e:
                self.problems.add(secret.value_source(key), secret.address, f"spec.data.{key}: {e}")
                value = ""
            self._cache[(secret_name, key)] = Revealed(value, f"{secret_name}/{key}")
        return self._cache[(secret_name, key)]
