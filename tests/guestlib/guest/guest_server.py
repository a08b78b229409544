#!/usr/bin/python3
"""Command server of the vfs-agent test harness; runs inside the guest, stdlib only.

It speaks JSON lines over the virtio-serial port named `org.vfs-agent.test`. Every request is
an object with an "id" and an "op"; every reply carries the same "id":

    {"id": 1, "op": "ping"}                    -> {"id": 1, "ok": true, "boot_id": ..., ...}
    {"id": 2, "op": "run", "argv": [...] | "sh": "...",
     "timeout": 60, "input_b64": "...", "env": {...}, "cwd": "/"}
                                        -> {"id": 2, "rc": 0, "stdout_b64": ..., "stderr_b64": ...,
                                            "timed_out": false, "seconds": 0.1}
    {"id": 3, "op": "put", "path": "/x", "data_b64": "...", "mode": 420}   -> {"id": 3, "ok": true}
    {"id": 4, "op": "get", "path": "/x"}                      -> {"id": 4, "data_b64": "..."}
    {"id": 5, "op": "poweroff"} | {"id": 5, "op": "reboot"}   -> {"id": 5, "ok": true}, then acts

Errors come back as {"id": n, "error": "text"}. Output is base64 because commands may print
bytes that are not UTF-8 (tags are untrusted). Requests are served one at a time.

With --pid1 (fast boot mode) this process is the guest's init: it forks the server, reaps every
orphan, and powers the machine off (or reboots it) when the server asks to.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PORT_NAME = "org.vfs-agent.test"
EXIT_POWEROFF = 0
EXIT_REBOOT = 10
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_RESTART = 0x01234567
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(message: str) -> None:
    """Write to the kernel log, which ends up on the serial console the host keeps."""
    line = f"vfs-agent-test-channel: {message}\n"
    try:
        with open("/dev/kmsg", "w", encoding="utf-8") as kmsg:
            kmsg.write(line)
    except OSError:
        sys.stderr.write(line)


def find_port(wait: float) -> str:
    """Device node of our virtio-serial port; mknod it when /dev lacks it (no udev)."""
    deadline = time.monotonic() + wait
    tried_modprobe = False
    while True:
        for entry in sorted(Path("/sys/class/virtio-ports").glob("*")):
            try:
                name = (entry / "name").read_text().strip()
            except OSError:
                continue
            if name != PORT_NAME:
                continue
            node = Path("/dev") / entry.name
            if not node.exists():
                major, minor = (entry / "dev").read_text().strip().split(":")
                os.mknod(node, 0o600 | 0o020000, os.makedev(int(major), int(minor)))
            return str(node)
        if not tried_modprobe:
            tried_modprobe = True
            subprocess.run(["modprobe", "-q", "virtio_console"], check=False)
            continue
        if time.monotonic() > deadline:
            raise SystemExit(f"virtio-serial port {PORT_NAME} not found")
        time.sleep(0.1)


class Port:
    """Line-oriented access to the port. Reads return 0 bytes while the host is disconnected."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.buffer = b""

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                time.sleep(0.1)
                continue
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def write_obj(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        while data:
            written = os.write(self.fd, data)
            data = data[written:]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def op_run(req: dict[str, Any]) -> dict[str, Any]:
    argv = [str(a) for a in req["argv"]] if "argv" in req else ["/bin/sh", "-c", str(req["sh"])]
    timeout = float(req.get("timeout") or 60)
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
    env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
    stdin = base64.b64decode(req["input_b64"]) if req.get("input_b64") else b""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=req.get("cwd") or "/",
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return {"rc": 127, "stdout_b64": "", "stderr_b64": _b64(f"{exc}\n".encode())}
    timed_out = False
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild in another session holds the pipes
            out, err = b"", b"(output lost: pipes held open after the timeout)\n"
            proc.wait()
    return {
        "rc": proc.returncode,
        "stdout_b64": _b64(out),
        "stderr_b64": _b64(err),
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - started, 3),
    }


def op_put(req: dict[str, Any]) -> dict[str, Any]:
    path = Path(req["path"])
    if req.get("mkdir"):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    mode = int(req.get("mode", 0o644))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, base64.b64decode(req["data_b64"]))
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return {"ok": True}


def op_get(req: dict[str, Any]) -> dict[str, Any]:
    return {"data_b64": _b64(Path(req["path"]).read_bytes())}


def serve(mode: str, pid1: bool) -> int:
    port = Port(find_port(wait=120))
    log(f"serving on {PORT_NAME} (mode {mode})")
    while True:
        line = port.read_line()
        try:
            req = json.loads(line)
        except ValueError:
            log(f"ignoring a malformed request line ({len(line)} bytes)")
            continue
        reply: dict[str, Any] = {"id": req.get("id")}
        op = req.get("op")
        try:
            if op == "ping":
                uptime = float(Path("/proc/uptime").read_text().split()[0])
                boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
                reply.update(ok=True, mode=mode, uptime=uptime, pid=os.getpid(), boot_id=boot_id)
            elif op == "run":
                reply.update(op_run(req))
            elif op == "put":
                reply.update(op_put(req))
            elif op == "get":
                reply.update(op_get(req))
            elif op in ("poweroff", "reboot"):
                reply.update(ok=True)
                port.write_obj(reply)
                os.sync()
                if pid1:
                    return EXIT_POWEROFF if op == "poweroff" else EXIT_REBOOT
                subprocess.run(["systemctl", op, "--no-block"], check=False)
                continue
            else:
                reply.update(error=f"unknown op {op!r}")
        except Exception as exc:
            reply.update(error=f"{type(exc).__name__}: {exc}")
        port.write_obj(reply)


def _reboot(cmd: int) -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(ctypes.c_int(cmd))
    log(f"reboot({cmd:#x}) failed: errno {ctypes.get_errno()}")


def run_as_init(mode: str) -> None:
    """PID 1: run the server in a child, reap orphans, power off when it says so."""
    restarts = 0
    while True:
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.setsid()
                code = serve(mode, pid1=True)
            except BaseException as exc:
                log(f"server failed: {type(exc).__name__}: {exc}")
            finally:
                os._exit(code)
        while True:
            pid, status = os.wait()
            if pid == child:
                break
        code = os.waitstatus_to_exitcode(status)
        if code == EXIT_POWEROFF:
            _reboot(LINUX_REBOOT_CMD_POWER_OFF)
        elif code == EXIT_REBOOT:
            _reboot(LINUX_REBOOT_CMD_RESTART)
        restarts += 1
        log(f"server exited with {code}; restart {restarts}")
        if restarts > 5:
            _reboot(LINUX_REBOOT_CMD_POWER_OFF)
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="systemd", help="reported by ping: fast or systemd")
    parser.add_argument("--pid1", action="store_true", help="act as init (fast boot mode)")
    args = parser.parse_args()
    if args.pid1:
        run_as_init(args.mode)
    sys.exit(serve(args.mode, pid1=False))


if __name__ == "__main__":
    main()
