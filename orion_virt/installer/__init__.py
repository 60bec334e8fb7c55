"""install-client: installs the Orion client runtime into a guest or container (see core).

Standard library only, and importing this package imports nothing else, so the installer also
runs from the self-contained bundle (``python3 install-client.pyz``) and from an installed copy
(``python3 -m orion_virt.installer --uninstall``).
"""
