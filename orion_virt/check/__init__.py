"""``orion-check``: diagnoses an installation or a running system as the seeds' tool does.

``install controller|server|client`` checks whether a component can be installed and started
here; ``runtime controller|server|client`` diagnoses the running system. Each check function
takes an output stream and returns the exit code (0: every check passed, warnings allowed;
1: a check failed). The client checks live in :mod:`.client`.
"""
