import gzip
from pathlib import Path

from faketree import FakeTree

from vfs_agent.system.kernel_features import ModuleState, kernel_report
from vfs_agent.system.sysroot import SysRoot

DEP_61 = (
    "kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko\n"
    "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n"
)


def test_debian12_style_module_not_loaded(tmp_path: Path):
    tree = FakeTree(tmp_path)
    tree.virtiofs("t", sysfs=False)
    tree.kernel(
        "6.1.0-30-amd64", filesystems="nodev\tproc\n", dep=DEP_61, config="CONFIG_FUSE_DAX=y\n"
    )
    report = kernel_report(SysRoot(tmp_path))
    assert report.virtiofs is ModuleState.MODULE and report.usable
    assert report.ninep is ModuleState.MODULE
    assert report.dax is True and not report.sysfs_tags
    messages = " ".join(p.message for p in report.problems)
    assert "not loaded" in messages and "/sys/fs/virtiofs" in messages


def test_debian13_style_builtin(tmp_path: Path):
    tree = FakeTree(tmp_path)
    tree.virtiofs("t")
    tree.kernel(
        "6.12.57+deb13-amd64",
        filesystems="nodev\tvirtiofs\n",
        builtin="kernel/fs/fuse/fuse.ko\nkernel/fs/fuse/virtiofs.ko\n",
    )
    tree.write("proc/config.gz", gzip.compress(b"# CONFIG_FUSE_DAX is not set\n"))
    tree.write("sys/kernel/security/lockdown", "[none] integrity confidentiality\n")
    report = kernel_report(SysRoot(tmp_path))
    assert report.virtiofs is ModuleState.BUILTIN and report.sysfs_tags
    assert report.dax is False and report.lockdown == "none"
    assert [p.message for p in report.problems] == [
        "DAX is not available (CONFIG_FUSE_DAX is not set)"
    ]


def test_loaded_module_missing_support_and_no_device_hint(tmp_path: Path):
    tree = FakeTree(tmp_path)
    tree.kernel(
        "6.1.0",
        filesystems="nodev\tvirtiofs\n",
        modules="virtiofs 28672 0 - Live 0x0\n",
        dep=DEP_61,
    )
    assert kernel_report(SysRoot(tmp_path)).virtiofs is ModuleState.LOADED
    tree.kernel("5.0.0", filesystems="nodev\tproc\n")
    report = kernel_report(SysRoot(tmp_path))
    assert report.virtiofs is ModuleState.MISSING and not report.usable
    hints = "\n".join(p.hint for p in report.problems)
    assert "<driver type='virtiofs'/>" in hints and "memoryBacking" in hints


def test_lockdown_is_reported_with_a_fallback_hint(tmp_path: Path):
    tree = FakeTree(tmp_path)
    tree.kernel("6.1.0", filesystems="nodev\tvirtiofs\n")
    tree.write("sys/kernel/security/lockdown", "none [integrity] confidentiality\n")
    report = kernel_report(SysRoot(tmp_path))
    assert report.lockdown == "integrity"
    assert any("name every tag in the policy" in p.hint for p in report.problems)
