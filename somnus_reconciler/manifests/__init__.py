"""manifests: YAML in, DesiredState out.

`guarded_yaml` reads and composes YAML under limits, `loader` validates each
document into a manifest kind with its FILE:LINE, `references` resolves names,
cycles and image paths into a `values.desired.DesiredState`, and `pack_files`
fingerprints the files a pack's run reads. May import: values, images (image
path checks), settings.
"""
