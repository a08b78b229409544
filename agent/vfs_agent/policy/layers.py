"""The layers the policy is made of, in read order (a later layer wins; see policy/types.py):

1. the image's files: /etc/vfs-agent/policy.yaml, then policy.d/*.yaml in lexical order except
   the cloud-init drop-in;
2. the systemd credential `vfs-agent.policy` (same YAML format), however systemd imported it
   (SMBIOS type 11, QEMU fw_cfg, `systemd.set_credential=` on the kernel command line);
3. `vfs_agent.mount=` arguments on the kernel command line (policy/cmdline.py);
4. the cloud-init drop-in policy.d/50-cloud-init.yaml (user-data is the most specific).

The host's layers (2, 3) sit above the image's defaults and below cloud-init's user-data.
An invalid host layer is reported and ignored (it must never stop a boot); an invalid file
is an error as before. `--policy PATH` reads that one file and no other layer.

Cheap to import: the boot-time generator fingerprints the layers through this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum

from vfs_agent.policy.cmdline import CMDLINE, fingerprint_text
from vfs_agent.policy.files import DROPIN_DIR, policy_files
from vfs_agent.policy.types import Policy
from vfs_agent.system.sysroot import SysRoot

CREDENTIAL = "vfs-agent.policy"
SYSTEM_CREDENTIALS = "/run/credentials/@system"
CLOUD_INIT_DROPIN = f"{DROPIN_DIR}/50-cloud-init.yaml"
CREDENTIAL_LAYER = f"credential {CREDENTIAL}"
CMDLINE_LAYER = "kernel command line"


class LayerKind(StrEnum):
    FILE = "file"
    CREDENTIAL = "credential"
    CMDLINE = "cmdline"


@dataclass(frozen=True)
class Layer:
    name: str  # how messages, plans and the cache name it: a file path, or the two names above
    kind: LayerKind
    path: str  # the file it is read from, inside the root


@dataclass(frozen=True)
class LoadedPolicy:
    """The merged policy and the layers it was read from, as the loader (policy/load.py)
    returns them: compiling (policy/compiled.py) fingerprints exactly these layers, so a file
    that appears after loading makes the compiled form stale instead of silently covered."""

    policy: Policy
    layers: tuple[Layer, ...]
    default_files: bool  # False for `--policy PATH`: one file, never compiled


def credentials_directory(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    """Where the system credentials are: $CREDENTIALS_DIRECTORY for the generator (systemd
    sets it for generators and for services with ImportCredential=), else systemd's
    /run/credentials/@system. Inside --root like every other path."""
    environ = os.environ if environ is None else environ
    return environ.get("CREDENTIALS_DIRECTORY") or SYSTEM_CREDENTIALS


def policy_layers(
    sysroot: SysRoot, explicit: str | None, credentials_dir: str = SYSTEM_CREDENTIALS
) -> list[Layer]:
    """The layers present on this system, in read order."""
    files = policy_files(sysroot, explicit)
    if explicit is not None:
        return [Layer(name, LayerKind.FILE, name) for name in files]
    image = [Layer(n, LayerKind.FILE, n) for n in files if n != CLOUD_INIT_DROPIN]
    host = []
    credential = f"{credentials_dir.rstrip('/')}/{CREDENTIAL}"
    if sysroot.lexists(credential):
        host.append(Layer(CREDENTIAL_LAYER, LayerKind.CREDENTIAL, credential))
    if fingerprint_text(sysroot.read_text(CMDLINE) or ""):
        host.append(Layer(CMDLINE_LAYER, LayerKind.CMDLINE, CMDLINE))
    user = [Layer(n, LayerKind.FILE, n) for n in files if n == CLOUD_INIT_DROPIN]
    return image + host + user
