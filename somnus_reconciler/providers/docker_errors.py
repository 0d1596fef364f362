"""docker-py's and requests' exceptions, mapped once into ours.

`docker_provider` and `docker_images` run every dockerd call inside `mapped`,
so nothing docker-specific leaks out of the adapter: dockerd that cannot be
reached is `BackendUnavailable`, one that does not answer in time a
`TemporaryProviderError`, anything else it refuses a (permanent) `ProviderError`
naming the container or image and the action. `docker` is imported on first
use, as in the provider.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from somnus_reconciler.providers.protocols import BackendUnavailable, ProviderError, TemporaryProviderError


@contextlib.contextmanager
def mapped(address: str, action: str) -> Iterator[None]:
    """Turn docker and requests exceptions raised inside into ours, `from` them."""
    try:
        yield
    except Exception as e:
        ours = _translate(e, address, action)
        if ours is None:
            raise
        raise ours from e


def _translate(e: Exception, address: str, action: str) -> ProviderError | None:
    import docker.errors
    import requests.exceptions

    if isinstance(e, requests.exceptions.ConnectionError):
        return BackendUnavailable(f"dockerd cannot be reached ({address}: {action}): {e}", kind="container")
    if isinstance(e, requests.exceptions.Timeout):
        return TemporaryProviderError(address, action, f"dockerd did not answer in time: {e}")
    if isinstance(e, docker.errors.APIError):
        cause = e.explanation or str(e)
        if isinstance(cause, bytes):
            cause = cause.decode(errors="replace")
        return ProviderError(address, action, f"{cause} (HTTP {e.status_code})")
    if isinstance(e, (docker.errors.DockerException, requests.exceptions.RequestException)):
        return ProviderError(address, action, str(e))
    return None


def is_not_found(e: BaseException | None) -> bool:
    import docker.errors

    return isinstance(e, docker.errors.NotFound)


def is_image_not_found(e: BaseException | None) -> bool:
    import docker.errors

    if isinstance(e, docker.errors.ImageNotFound):
        return True
    # Some daemon versions answer a 404 whose class docker-py cannot tell apart.
    return isinstance(e, docker.errors.NotFound) and "no such image" in str(e).lower()
