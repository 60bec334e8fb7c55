"""orion-bench: the remoting hot path measured against the floors of its transports.

One run starts its own oriond (sim backend, temporary shared-memory device, loopback port),
drives it from client processes through the native client (cuda-bindings over its
``libcuda.so.1``, ``make native``) and, side by side in the same run, measures what the
transports themselves can do: a raw two-process ping-pong over the same ring and over a loopback
TCP socket, raw ring and socket transfers, and a plain memcpy. Results are compared against the
targets in ``targets.py``.

Modules: ``stats`` (summaries), ``floors`` (raw transport floors, forked peers), ``agent`` (the
client process), ``harness`` (oriond and agents), ``run`` (the whole benchmark), ``report``
(table, JSON, PNG). Entry point: ``orion-bench`` (``orion_virt.cli.orion_bench``).
"""
