"""providers: one adapter per backend, behind the narrow protocols in `protocols`.

`libvirt_provider` (+ `domain_xml`), `docker_provider` and `ansible_provider` are
the only modules that import libvirt, docker and ansible_runner, and they map
their errors once. The guest side lives here too: `guest_access` (per-VM keys,
agent tokens, seed disk) and `agent_client` (the in-guest agent over its
loopback forward). `backends` opens libvirt and Docker together and observes
them. May import: values, manifests (pack files), images, journal, settings.
"""
