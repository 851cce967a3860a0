"""`python -m eventflow_emulators.cosmos`: the emulator (see server.py)."""

import sys

from eventflow_emulators.cosmos.server import main

sys.exit(main())
