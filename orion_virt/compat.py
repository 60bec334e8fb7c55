"""Strings kept byte-identical to the output of the original Orion tools.

Users of Orion (and their scripts, runbooks and monitoring) know these lines from the Orion vGPU
documentation (``shared/seeds``): the troubleshooting section tells them to look for
``Could not connect to server`` and ``Fail to get version information from Orion Controller.``,
and the sample ``orion-check`` sessions show the controller lines verbatim. So the code prints
them exactly as the original tools did, **typos included**, and every one lives here, once,
documented, with a unit test (``tests/unit/test_compat.py``) that pins the bytes and checks that
the seeds contain them. Do not "fix" the spelling: a grep for the documented line would stop
matching. Text of our own (hints, reasons) is written normally next to these lines, never inside.

Templates take ``str.format`` fields; everything outside the braces is the original's bytes.

Standard library only and free of imports: the guest client (``install-client``) carries it.
"""

from __future__ import annotations

# -- the misspelt ones ----------------------------------------------------------------------------

ENV_CONTROLLER_MISSPELT = "ORION_OCNTROLLER"
"""The controller's environment variable as the seeds' client guide spells it ("OCNTROLLER",
letters swapped: ``export ORION_OCNTROLLER=127.0.0.1:9123``). Accepted after the correct
``ORION_CONTROLLER`` so that environments written from that guide keep working."""

ENV_CONTROLLER = "ORION_CONTROLLER"
"""The controller's environment variable, correctly spelt (takes priority over the misspelt one)."""

ENV_CONTROLLER_NAMES = (ENV_CONTROLLER, ENV_CONTROLLER_MISSPELT)
"""Where the client's controller address may come from, highest priority first."""

CONTROLLER_ADDR_SET = ("Orion Controller addrress is set as {addr} in {origin}. "
                       "Using this address to diagnose Orion Controller")
"""orion-check's first controller line ("addrress": doubled r in the original). ``origin`` is
``configuration file`` or ``environment variable ORION_CONTROLLER``."""

CONTROLLER_VERSION = "Orion Controller Version Infomation : {version}"
"""The controller's version line ("Infomation": missing r in the original; note the space before
the colon). ``version`` prints as ``data_version=0.1,api_version=0.1``."""

VGPU_SUMMARY = "There are {total} vGPU under managered by Orion Controller. {free} vGPU are free now."
"""The pool line ("under managered": the original's grammar; "vGPU" is never pluralised)."""

# -- correctly spelt, but matched verbatim -----------------------------------------------------------

MSG_CONNECT = "Could not connect to server"
"""Printed by the client (and orion-check) when the controller's port cannot be reached; the
seeds' troubleshooting section names this line, without a final period."""

MSG_VERSION = "Fail to get version information from Orion Controller."
"""Printed with :data:`MSG_CONNECT` (or alone, when something answers that is no controller);
"Fail to" is the original's grammar; the final period is part of the line."""

MSG_NO_ALLOCATION = "Client exits without allocation ID"
"""The client's exit line when it obtained no vGPU (the seeds' second troubleshooting case)."""

MSG_EXIT_WITH = "Client exits with allocation ID {allocation_id}"
"""The client's exit line after it held an allocation."""

BANNER_PREFIX = "VirtaiTech Resource. Build-cuda-"
"""The client's start banner begins so ("VirtaiTech", as the original prints it); our build
name follows (the original put its git hash and build date there)."""

CONTROLLER_SHELL_INFO = "Orion Controller setting may be different in different SHELL."
"""First ``[Info]`` line of orion-check's controller section."""

CONTROLLER_ENV_PRIORITY = "Environment variable ORION_CONTROLLER has the first priority."
"""Second ``[Info]`` line of orion-check's controller section."""

ADDRESS_REACHED = "Address {addr} is reached."
"""orion-check: a TCP connection to ``addr`` succeeded."""

SERVER_REACHED = "Orion Server can be reached through {addr}"
"""orion-check: the data-plane port answers (no final period in the original)."""

SERVER_USER = "Orion Server is running with Linux user   : {user}"
"""orion-check runtime server; the three spaces before the colon align it with :data:`SERVER_COMMAND`."""

SERVER_COMMAND = "Orion Server is running with command line : {command}"
"""orion-check runtime server: the running oriond's command line."""

INSTALL_TO = "Orion client environment will be installed to {prefix}"
"""install-client, before its question."""

INSTALL_QUESTION = "Do you want to continue [n/y] ?"
"""install-client's question (``[n/y]``, a space before ``?``); the answer follows on the line."""

INSTALL_CONF_GENERATED = "Configuration file is generated to {path}"
"""install-client: the client.conf it wrote."""

INSTALL_EDIT_CONTROLLER = ('Please edit the "controller_addr" setting and make it point to the controller '
                           "address in your environment.")
"""install-client's reminder after writing client.conf."""

INSTALL_DONE = "Orion vGPU client environment has been installed in {prefix}"
"""install-client's last status line."""

INSTALL_HOW_TO_RUN = ("To run application with Orion vGPU environment, please make sure Orion environment "
                      "is loaded. e.g.")
"""install-client: the line before its example (``e.g.`` ends it)."""

ALL = {name: value for name, value in list(globals().items())
       if name.isupper() and isinstance(value, str)}
"""Every string constant above, by name (the test walks it)."""
