"""Run a command under the sandbox of systemd/egressd.service, without systemd:
its system-call filter (an allow-list, everything else failing with EPERM, as
``SystemCallErrorNumber=EPERM``) and its view of /proc (``ProcSubset=pid``,
``ProtectProc=invisible``).

    python -m tests.kernel.sandboxed ALLOWED_FILE -- COMMAND [ARG...]

``ALLOWED_FILE`` lists the allowed system calls, one a line (the test
computes them from the unit with ``systemd-analyze syscall-filter``). The
/proc mount needs a private mount namespace: run this under ``unshare -m``.
The filter goes through libseccomp, as systemd's does, and is kept across
``execve`` (with no_new_privs set, as ``NoNewPrivileges=yes``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
NR_SCMP_ERROR = -1


def load_filter(allowed: list[str]) -> int:
    """Install the allow-list; returns how many of the names this kernel knows."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO | errno.EPERM)
    if not ctx:
        raise OSError("seccomp_init failed")
    known = 0
    for name in allowed:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr == NR_SCMP_ERROR:
            continue  # not a system call of this architecture
        rc = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0)
        if rc != 0:
            raise OSError(-rc, f"seccomp_rule_add({name}) failed")
        known += 1
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise OSError(-rc, "seccomp_load failed")
    return known


def main(argv: list[str]) -> NoReturn:
    allowed_file, sep, *command = argv
    if sep != "--" or not command:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    # ProcSubset=pid and ProtectProc=invisible: a fresh /proc with only the processes
    subprocess.run(["mount", "-t", "proc", "-o", "subset=pid,hidepid=invisible", "proc", "/proc"], check=True)
    load_filter([line.strip() for line in Path(allowed_file).read_text().splitlines() if line.strip()])
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
