"""images: base images built locally from recipes, cached by recipe version.

VM images (`vm_images`: find by name or path, build dispatch; `tiny_linux`,
`debian_image`), the image store every build shares (`store`: layout, staging, locks, publish), debootstrapped Debian
trees (`rootfs`) and container images (`container_images`, which reaches Docker
through a small Protocol). May import: values, settings.
"""
