"""``egressd`` with its nftables transactions run through libnftables in-process (benchmark variant).

    python chaos/_bench_libnft_daemon.py run --config FILE

Used by ``chaos/bench_takeover.py --snat-backend libnftables`` to measure what
the takeover gains when ``NftablesSnat`` stops running one ``nft -f -`` process
per transaction. Everything else is the unchanged ``egressd`` command line: only
``NftablesSnat._run`` (the ``nft -f -`` transactions: activate, deactivate, fence
refresh, stage) is replaced, by a call of ``nft_run_cmd_from_buffer`` on one
long-lived libnftables context in a dedicated thread. Listings still run ``nft``.

Why it matters: closing an nfnetlink socket after a commit blocks in the kernel
(``netlink_release`` -> ``nft_rcv_nl_event`` -> ``flush_work`` of the
transaction-destroy work, which waits for an RCU grace period), so every ``nft``
process spends 4-30 ms in ``close()`` after its transaction is already active,
and the caller waits for that before it goes on. A context that keeps its socket
open never closes it on the takeover path.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from egressd.adapters import nftables as nft_adapter
from egressd.cli.main import main as egressd_main
from egressd.core.errors import DataPlaneError


class LibNftables:
    """One libnftables context (one netlink socket) used from one thread."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        self._lib = lib
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressd-libnft")
        self._ctx: Any = self._pool.submit(self._new).result()

    def _new(self) -> Any:
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        return ctx

    def _run_blocking(self, script: str) -> tuple[int, str]:
        rc = int(self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode()))
        err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, err.decode(errors="replace")

    async def run(self, script: str, what: str) -> None:
        rc, err = await asyncio.get_running_loop().run_in_executor(self._pool, self._run_blocking, script)
        if rc != 0:
            raise DataPlaneError(f"nft {what} failed (libnftables {rc}): {err.strip()[:2000]}")


def install() -> None:
    lib = LibNftables()

    async def run(self: nft_adapter.NftablesSnat, script: str, *, what: str) -> None:
        del self
        await lib.run(script, what)

    nft_adapter.NftablesSnat._run = run  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    sys.exit(egressd_main())
