"""Chaos drills against the lab: fault the owner of an egress IP, measure the outage and look for two owners.

``egressd drill --scenario NAME --rounds N`` (:mod:`egressd.cli.drill`) runs
:class:`egressd.drill.run.Drill` against the lab of :mod:`egressd.lab.netlab`.
Every round faults the gateway that owns the egress IP of the pod ``xwing``
(the *target*), waits until the lab has settled again, and measures what the
outside saw.

* :mod:`egressd.drill.analysis`     the events the instruments record and the pure measures of a
  round (gap, lost probes, dual ownership, summary); no I/O, no threads.
* :mod:`egressd.drill.frames`       ARP requests, frame decoding and the capture's BPF filter.
* :mod:`egressd.drill.instruments`  the threaded probers, bridge watcher, outpost tail and lease poller.
* :mod:`egressd.drill.survival`     the pure measures of the long-lived connections kept through a fault.
* :mod:`egressd.drill.keepers`      the connection server and keepers of a round (processes in the lab).
* :mod:`egressd.drill.faults`       the scenarios as one table: fault, hold, recover, restart.
* :mod:`egressd.drill.run`          :class:`~egressd.drill.run.Drill`: the instruments on a lab and the rounds.
* :mod:`egressd.drill.report`       the JSON report and the plot of one round.
"""
