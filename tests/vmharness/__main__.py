"""``python -m tests.vmharness [--rebuild]``: build (or locate) the cached test guest."""
import sys

from .image import main

sys.exit(main())
