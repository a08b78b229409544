"""SELinux-labelled guests: context=, fscontext=, defcontext=, rootcontext= are accepted for
both transports and reach mount(2)'s data, fstab and units verbatim (a quoted level with
categories included); malformed ones are refused with a hint."""

from __future__ import annotations

import pytest

from vfs_agent.core.mount_options import (
    kernel_options,
    option_problem,
    to_mount_args,
    transport_problem,
)
from vfs_agent.core.transport import Transport

GOOD = [
    "context=system_u:object_r:container_file_t:s0",
    'context="system_u:object_r:container_file_t:s0:c1,c2"',
    "fscontext=system_u:object_r:nfs_t:s0",
    "defcontext=system_u:object_r:public_content_t:s0",
    "rootcontext=system_u:object_r:var_t",
]


@pytest.mark.parametrize("option", GOOD)
@pytest.mark.parametrize("transport", list(Transport))
def test_contexts_are_accepted_and_passed_to_the_kernel(option: str, transport: Transport):
    assert option_problem(option) is None
    assert transport_problem((option,), transport) is None
    args = to_mount_args(("nosuid", option), transport)
    assert args.data.endswith(option)
    assert option in kernel_options(("nosuid", option), transport)


@pytest.mark.parametrize(
    "option, wanted",
    [
        ("context=system_u:object_r:x_t:s0:c1,c2", 'must be quoted: context="'),
        ("defcontext=bogus", "takes an SELinux context"),
        ("context=", "takes an SELinux context"),
        ('context="a:b:c', "takes an SELinux context"),
        ("rootcontext=a:b:c d", "takes an SELinux context"),
        ('fscontext="a:b:c",ro', "takes an SELinux context"),
    ],
)
def test_malformed_contexts_are_refused(option: str, wanted: str):
    problem = option_problem(option)
    assert problem is not None and wanted in problem
