"""Kubernetes over the official ``kubernetes`` client.

* :mod:`~egressd.adapters.kube.client`: the ApiClient, raw requests, and the
  client's errors translated into egressd's own.
* :mod:`~egressd.adapters.kube.informer`: list, then watch, one collection
  from a thread, bridged to the event loop.
* :mod:`~egressd.adapters.kube.leases`: the lease store.
* :mod:`~egressd.adapters.kube.cluster`: the Kubernetes-mode inputs
  (policies, Nodes, Namespaces, Pods) and the status and Events written.
"""
