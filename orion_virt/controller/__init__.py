"""The controller: the vGPU pool, its stores, HTTP API, tokens, and the stdlib-only client.

Guests import :mod:`orion_virt.controller.client` and :mod:`orion_virt.controller.token`; both
(and :mod:`.model`, :mod:`.exceptions`) use only the standard library. Keep this file empty of
imports so that importing them pulls in nothing else.
"""
