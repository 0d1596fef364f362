"""providers: one adapter per backend, behind the narrow protocols in `protocols`.

`libvirt_provider` (+ `domain_xml`), `docker_provider` (+ `docker_images`,
`docker_errors`) and `ansible_provider` (+ `ansible_inputs`, `ansible_results`,
`ansible_processes`) are the only modules that import libvirt, docker and
ansible_runner, and they map their errors once into `protocols.ProviderError`
(of the temporary kind when trying again may help). The guest side lives here
too: `guest_access` (per-VM keys, agent tokens, seed disk) and `agent_client`
(the in-guest agent over its loopback forward). `backends` opens libvirt and
Docker together and observes them; `host_gpus` reads the host's GPUs. May import: values, manifests (pack files),
images, journal, settings.
"""
