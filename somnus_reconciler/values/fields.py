"""The field types of manifests: names, labels, quantities, paths, package names, URIs,
and `Strict`, the base of every manifest model.

`values.model` (and `values.gpu`, for `gpu:`) builds the manifest kinds from these.
Each type that reaches something which interprets it (Ansible, libvirt, Docker labels)
is held to a syntax here, with a message that says which rule a value broke;
`manifests.loader` puts the file, line and field in front of it.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from somnus_reconciler.values import quantity
from somnus_reconciler.values.quantity import format_bytes

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Strict(BaseModel):
    """Base of every manifest model: camelCase aliases, frozen, no unknown fields."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, defer_build=True
    )


Name = Annotated[str, Field(pattern=DNS1123_LABEL, min_length=1, max_length=63)]

# Kubernetes label syntax (apimachinery IsQualifiedName, IsValidLabelValue): a key is
# [prefix/]name with a DNS-1123 subdomain as prefix; a name, and a value unless empty,
# is at most 63 of these characters.
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL_RULE = ("at most 63 characters: letters, digits, '-', '_' and '.', "
               "beginning and ending with a letter or digit")
# Package names of apt (name, name=version, name/release, name:arch), winget ids and
# brew formulae (name@version, tap/name): no spaces, no shell or template characters.
PACKAGE_NAME = r"[A-Za-z0-9][A-Za-z0-9._+:@/=~-]*"
TEMPLATE_MARKERS = ("{{", "{%", "{#")
_LIBVIRT_SCHEMES = ("qemu", "qemu+unix")
_LIBVIRT_PATHS = ("/system", "/session")


def _shown(text: str, limit: int = 40) -> str:
    """`text` quoted for a message, cut short: hostile input can be long."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _label_value(value: str) -> str:
    if value and not (len(value) <= 63 and re.fullmatch(LABEL_NAME, value)):
        raise ValueError(f"label value {_shown(value)} must be empty or {_LABEL_RULE}")
    return value


def label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and re.fullmatch(DNS1123_SUBDOMAIN, prefix)):
        return ("its prefix must be a DNS-1123 subdomain "
                "(lowercase letters, digits, '-' and '.', at most 253 characters)")
    if not (len(name) <= 63 and re.fullmatch(LABEL_NAME, name)):
        return f"its name must be {_LABEL_RULE}"
    return None


def _no_template(text: str) -> str:
    """Refuse Jinja markers in strings that reach Ansible as extra vars: Ansible
    templates them on the host, where `lookup('pipe', ...)` runs any command."""
    if any(marker in text for marker in TEMPLATE_MARKERS):
        raise ValueError(f"{_shown(text)} contains a template marker ({', '.join(TEMPLATE_MARKERS)}): "
                         "Ansible would evaluate it on the host")
    return text


def _package_name(name: str) -> str:
    if not (len(name) <= 200 and re.fullmatch(PACKAGE_NAME, name)):
        raise ValueError(f"package name {_shown(name)} must start with a letter or digit and hold only "
                         "letters, digits and . _ + : @ / = ~ -")
    return name


def _absolute_path(path: str) -> str:
    if not path.startswith(("/", "~")):
        raise ValueError(f"{_shown(path)} must be an absolute path")
    return path


def _guest_file_path(path: str) -> str:
    parts = path.split("/")
    if not path.startswith("/") or path.endswith("/") or "\0" in path or ".." in parts or "." in parts:
        raise ValueError(f"{_shown(path)} must be an absolute file path in the guest (no ~, . or .., "
                         "not ending in /)")
    return path


def _local_libvirt_uri(uri: str) -> str:
    """Only the local daemon: remote transports reach other hosts, and `ext` (or ssh's
    `command=`) runs a program of the manifest's choosing. SOMNUS_LIBVIRT_URI, set by
    whoever runs somnus, is not limited."""
    parts = urllib.parse.urlsplit(uri)
    options = set(urllib.parse.parse_qs(parts.query, keep_blank_values=True))
    if (parts.scheme not in _LIBVIRT_SCHEMES or parts.netloc or parts.path not in _LIBVIRT_PATHS
            or options - {"socket"} or parts.fragment):
        raise ValueError(f"{_shown(uri)} is not a local libvirt URI: a Pool may give qemu:///system or "
                         "qemu:///session (qemu+unix with ?socket=PATH too); set SOMNUS_LIBVIRT_URI "
                         "for any other")
    return uri


# Byte counts as libvirt and Docker hold them (signed 64 bits). Unbounded, '9' * 5000
# would pass and only fail later, where it is printed: int -> str stops at 4300 digits.
MAX_BYTES = 2**63 - 1


def _at_most_8ei(amount: int) -> int:
    if amount > MAX_BYTES:
        raise ValueError(f"is more than {format_bytes(MAX_BYTES + 1)} ({MAX_BYTES} bytes), "
                         "the most libvirt and Docker take")
    return amount


Quantity = Annotated[quantity.Quantity, AfterValidator(_at_most_8ei)]
LabelValue = Annotated[str, AfterValidator(_label_value),
                       Field(json_schema_extra={"maxLength": 63, "pattern": f"^({LABEL_NAME})?$"})]
AnsibleText = Annotated[str, AfterValidator(_no_template)]
PackageName = Annotated[str, AfterValidator(_package_name),
                        Field(json_schema_extra={"maxLength": 200, "pattern": f"^{PACKAGE_NAME}$"})]
AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
GuestFilePath = Annotated[str, AfterValidator(_guest_file_path)]
LibvirtUri = Annotated[str, AfterValidator(_local_libvirt_uri)]


# age's X25519 recipients: "age1" and 58 bech32 characters.
AGE_RECIPIENT = r"^age1[02-9ac-hj-np-z]{58}$"
AGE_ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
AgeRecipient = Annotated[str, Field(pattern=AGE_RECIPIENT)]
# A Secret's keys name environment variables and files alike.
SecretKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$", min_length=1, max_length=253)]


def _age_armored(value: str) -> str:
    """A Secret's value as it stands in a manifest: age's ASCII armor, nothing in clear."""
    if not value.strip().startswith(AGE_ARMOR_BEGIN):
        raise ValueError(f"is not encrypted (age's armor, {AGE_ARMOR_BEGIN}): run `somnus secret encrypt FILE`")
    return value


AgeArmored = Annotated[str, AfterValidator(_age_armored)]
