"""Conntrack entries of the flows egressd SNATs, over ctnetlink.

* :mod:`~egressd.adapters.conntrack.table`: :class:`KernelConntrack`, the
  Conntrack port (dump and events by mark, batched install and delete).
* :mod:`~egressd.adapters.conntrack.ctnetlink`: the netlink messages, built
  and read with ``struct`` on pyroute2's attribute tables.
"""

from egressd.adapters.conntrack.table import KernelConntrack

__all__ = ["KernelConntrack"]
