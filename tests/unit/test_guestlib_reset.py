"""Which kernel panics in a guest's reboot the harness resets and boots again."""

from __future__ import annotations

from tests.guestlib.vm import panic_worth_a_reset

# INIT and INT3_OOPS are cut from a real serial log of this harness (a Debian 13 guest, 6.12,
# whose reboot panicked); the other two follow the kernel's own messages.
INIT = b"[    6.328610] Run /init as init process\n"
INT3_OOPS = (
    b"[   18.728867] systemd[1]: Queued start job for default target graphical.target.\n"
    b"[   18.847762] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n"
    b"[   18.848313] RIP: 0010:kfree+0xa0/0x350\n"
    b"[   18.852284] Kernel panic - not syncing: Fatal exception in interrupt\n"
)
OTHER_OOPS = (
    b"[   21.104400] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
    b"[   21.104911] Oops: 0000 [#1] PREEMPT SMP NOPTI\n"
    b"[   21.112020] Kernel panic - not syncing: Fatal exception\n"
)
EARLY_PANIC = b"[    1.402113] Kernel panic - not syncing: NMI: Not continuing\n"


def test_a_panic_before_init_is_reset() -> None:
    assert panic_worth_a_reset(b"[    0.000000] Linux version 6.12\n" + EARLY_PANIC)


def test_the_emulators_int3_fault_after_init_is_reset() -> None:
    assert panic_worth_a_reset(INIT + INT3_OOPS)


def test_any_other_panic_after_init_is_left_to_the_test() -> None:
    assert not panic_worth_a_reset(INIT + OTHER_OOPS)


def test_no_panic_no_reset() -> None:
    booted = b"[   19.041210] systemd[1]: Reached target multi-user.target\n"
    assert not panic_worth_a_reset(INIT + booted)
