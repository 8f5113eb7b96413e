"""``egressd`` with one ``nft -f -`` process per nftables transaction (benchmark variant).

    python chaos/_bench_nftcmd_daemon.py run --config FILE

The daemon as shipped applies its nftables transactions through libnftables in
process; this variant forces the adapter's fallback (the ``nft`` command) so
that ``chaos/bench_takeover.py --snat-backend nft-command`` can compare the two.
"""

from __future__ import annotations

import sys
from typing import Any

from egressd.adapters import nftables
from egressd.cli.main import main

_init = nftables.NftablesSnat.__init__


def _without_library(self: nftables.NftablesSnat, **kwargs: Any) -> None:
    _init(self, **{**kwargs, "library": False})


if __name__ == "__main__":
    # the variant replaces the constructor on purpose, which mypy forbids by default
    nftables.NftablesSnat.__init__ = _without_library  # type: ignore[method-assign]
    sys.exit(main())
