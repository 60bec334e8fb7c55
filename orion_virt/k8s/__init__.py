"""Kubernetes: the kubelet device plugin (:mod:`.plugin`), the node labeller (:mod:`.labeller`) and
the scheduler extender (:mod:`.extender`). Needs the ``k8s`` extra (grpcio, protobuf, kubernetes);
the console scripts enter through :mod:`.entry`, which names the extra when a module is missing."""
