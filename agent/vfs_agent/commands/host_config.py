"""`vfs-agent host-config`: a policy file turned into what the VM's definition needs to hand it
to the guest as the systemd credential `vfs-agent.policy` (libvirt XML, QEMU arguments, kernel
command line), and into `vfs_agent.mount=` arguments when the policy is that simple.

Pure: takes the file's bytes and its validated contents, returns text. The credential is the
file's bytes, base64-encoded (`io.systemd.credential.binary:`), so newlines and any byte survive.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass, field
from typing import Any

from vfs_agent.policy.cmdline import KEY, escape_field
from vfs_agent.policy.layers import CREDENTIAL
from vfs_agent.policy.types import FileSection, TransportChoice

SMBIOS_PREFIX = "io.systemd.credential.binary:"
FW_CFG_PREFIX = "opt/io.systemd.credentials/"
COMMAND_LINE_SIZE = 2048  # x86's limit for the whole kernel command line, in bytes


@dataclass(frozen=True)
class HostConfig:
    smbios_string: str  # the SMBIOS type 11 string
    libvirt_sysinfo: str  # <sysinfo> element, a child of <domain>
    libvirt_os: str  # goes inside <os>
    qemu_smbios: list[str]  # argv
    qemu_fw_cfg: list[str]  # argv
    kernel_credential: str  # one kernel argument
    kernel_mounts: list[str] = field(default_factory=list)  # vfs_agent.mount= arguments
    not_as_mounts: list[str] = field(default_factory=list)  # why the policy needs a credential

    def to_dict(self) -> dict[str, Any]:
        return {
            "credential": CREDENTIAL,
            "smbios_type11": self.smbios_string,
            "libvirt": {"sysinfo": self.libvirt_sysinfo, "os": self.libvirt_os},
            "qemu": {"smbios": self.qemu_smbios, "fw_cfg": self.qemu_fw_cfg},
            "kernel_cmdline": {
                "credential": self.kernel_credential,
                "mounts": self.kernel_mounts,
                "mounts_unusable_because": self.not_as_mounts,
            },
        }


def qemu_escape(value: str) -> str:
    """QEMU's option parser splits on ','; a literal comma is written twice."""
    return value.replace(",", ",,")


def host_config(data: bytes, section: FileSection, file_path: str) -> HostConfig:
    """`data`: the policy file's bytes; `section`: its validated contents; `file_path`: the
    absolute path QEMU's fw_cfg should read it from."""
    encoded = base64.b64encode(data).decode("ascii")
    smbios = f"{SMBIOS_PREFIX}{CREDENTIAL}={encoded}"
    sysinfo = (
        "<sysinfo type='smbios'>\n"
        "  <oemStrings>\n"
        f"    <entry>{smbios}</entry>\n"
        "  </oemStrings>\n"
        "</sysinfo>"
    )
    mounts, why_not = _as_mounts(section)
    return HostConfig(
        smbios_string=smbios,
        libvirt_sysinfo=sysinfo,
        libvirt_os="<smbios mode='sysinfo'/>",
        qemu_smbios=["-smbios", f"type=11,value={smbios}"],
        qemu_fw_cfg=[
            "-fw_cfg",
            f"name={FW_CFG_PREFIX}{CREDENTIAL},file={qemu_escape(file_path)}",
        ],
        kernel_credential=f"systemd.set_credential_binary={CREDENTIAL}:{encoded}",
        kernel_mounts=mounts,
        not_as_mounts=why_not,
    )


def _as_mounts(section: FileSection) -> tuple[list[str], list[str]]:
    """The policy as vfs_agent.mount= arguments, or why it cannot be written that way."""
    why: list[str] = []
    written = [k for k, v in vars(section.defaults).items() if v is not None]
    if written:
        why.append(f"defaults ({', '.join(written)}) have no command-line form")
    mounts = []
    for index, rule in enumerate(section.rules, start=1):
        name = f"rule {index} ({rule.tag!r})"
        if rule.ignore or rule.path is None:
            why.append(f"{name}: only 'tag' + 'path' (+ 'options') have a command-line form")
        elif rule.required or rule.device_timeout is not None or rule.mount_timeout is not None:
            why.append(
                f"{name}: 'required', 'device_timeout' and 'mount_timeout' have no command-line "
                "form"
            )
        elif rule.transport is not TransportChoice.AUTO:
            why.append(f"{name}: 'transport' has no command-line form")
        else:
            value = f"{escape_field(rule.tag)}:{escape_field(rule.path)}"
            value += f":{','.join(rule.options)}" if rule.options else ""
            mounts.append(f"{KEY}={value}")
    return ([] if why else mounts), why


def host_config_text(config: HostConfig) -> str:
    """What a person pastes, section by section."""
    cred = config.kernel_credential
    lines = [
        f"# libvirt: in <domain>, next to <os> (the policy as the credential {CREDENTIAL}):",
        config.libvirt_sysinfo,
        "# and inside <os>:",
        config.libvirt_os,
        "",
        "# QEMU: SMBIOS type 11 ...",
        shlex.join(config.qemu_smbios),
        "# ... or fw_cfg (QEMU reads the file when it starts):",
        shlex.join(config.qemu_fw_cfg),
        "",
        "# Kernel command line (direct kernel boot, -append):",
        cred,
    ]
    if len(cred.encode()) > COMMAND_LINE_SIZE // 2:
        lines.append(
            f"# (that argument is {len(cred.encode())} bytes; x86 kernels take "
            f"{COMMAND_LINE_SIZE} for the whole command line: prefer SMBIOS or fw_cfg)"
        )
    if config.kernel_mounts:
        lines += ["# or, without systemd credentials:", " ".join(config.kernel_mounts)]
    elif config.not_as_mounts:
        lines.append("# (no vfs_agent.mount= form: " + "; ".join(config.not_as_mounts) + ")")
    return "\n".join(lines)
