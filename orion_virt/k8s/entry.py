"""Console scripts of the Kubernetes part, through the one entry of every command
(:func:`orion_virt.cli.entry`): a missing optional module is one line naming the ``k8s`` extra."""

from __future__ import annotations

from ..cli import entry, missing_module_message

__all__ = ["device_plugin_main", "missing_module_message", "node_labeller_main", "scheduler_extender_main"]

device_plugin_main = entry("orion_virt.k8s.cli", "orion-device-plugin", "device_plugin")
node_labeller_main = entry("orion_virt.k8s.cli", "orion-node-labeller", "node_labeller")
scheduler_extender_main = entry("orion_virt.k8s.cli", "orion-scheduler-extender", "scheduler_extender")
