"""orion-smi: the application's vGPUs as NVML reports them (the click-less ``orion_virt.client.smi``)."""

from __future__ import annotations

import sys

from ..client import smi


def main() -> None:
    sys.exit(smi.main())
