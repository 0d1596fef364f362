"""Secret files written into a running container through `docker exec`, never a host path.

`docker_provider.DockerProvider.write_files` delegates here on its open API client.
Each file's content goes on the exec's stdin (not its arguments or environment,
which `docker inspect` and `ps` show); a POSIX shell script in the container writes
it to a temporary file beside its path, gives it its mode and owner and renames it
over the old one, then reports its SHA-256, mode and owner for the step to verify.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from somnus_reconciler.providers.docker_errors import mapped
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.actual import WrittenFile
from somnus_reconciler.values.desired import Revealed, SecretFile

if TYPE_CHECKING:
    import docker

# $1 path, $2 mode (octal), $3 owner; the content on stdin. The temporary file is removed
# when anything fails, so a failed write leaves the old file as it was.
_WRITE = r"""set -e
dir=$(dirname "$1")
mkdir -p "$dir"
tmp=$(mktemp "$dir/.somnus-XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
chown "$3" "$tmp"
chmod "$2" "$tmp"
mv -f "$tmp" "$1"
trap - EXIT
sha256sum "$1" | cut -d' ' -f1
stat -c '%a %u %g' "$1"
"""


def write_files(api: docker.APIClient, address: str, container_id: str,
                writes: Sequence[tuple[SecretFile, Revealed]], removes: Sequence[str]) -> list[WrittenFile]:
    """Write each file (in order), then remove `removes`; ProviderError at the first failure."""
    done = []
    for file, value in writes:
        stdout = _exec(api, address, container_id, ["sh", "-c", _WRITE, "sh", file.path, f"{file.mode:o}", file.owner],
                       value.reveal().encode(), f"write {file.path}")
        try:
            sha256, stat = stdout.split("\n")[:2]
            mode, uid, gid = (int(word, 8 if i == 0 else 10) for i, word in enumerate(stat.split()))
        except ValueError:
            raise ProviderError(address, f"write {file.path}", "the container did not report the file it wrote "
                                "(does it have sha256sum and stat?)") from None
        done.append(WrittenFile(file.path, sha256, mode, uid, gid))
    for path in removes:
        _exec(api, address, container_id, ["rm", "-f", "--", path], b"", f"remove {path}")
    return done


def _exec(api: docker.APIClient, address: str, container_id: str, argv: list[str], stdin: bytes,
          action: str) -> str:
    """stdout of `argv` run as root with `stdin`; ProviderError (with its stderr) when it fails."""
    from docker.utils.socket import frames_iter

    with mapped(address, action):
        exec_id = api.exec_create(container_id, argv, stdin=True, stdout=True, stderr=True, user="0")["Id"]
        stream = api.exec_start(exec_id, socket=True)
        try:
            raw = stream._sock  # the hijacked connection: half-closed so that `cat` sees the end
            raw.sendall(stdin)
            raw.shutdown(socket.SHUT_WR)
            frames = list(frames_iter(stream, tty=False))
        finally:
            stream.close()
        code = api.exec_inspect(exec_id)["ExitCode"]
    out = b"".join(data for kind, data in frames if kind == 1).decode(errors="replace")
    err = b"".join(data for kind, data in frames if kind == 2).decode(errors="replace").strip()
    if code != 0:
        raise ProviderError(address, action, err.splitlines()[-1] if err else f"exited {code}")
    return out
