"""nbval runs the five notebooks in order on the smoke preset (each ≤ 60 s), sharing one output
directory, so 02–05 find what 01–04 trained. The parameters cell reads these variables."""

import os
import tempfile

os.environ.setdefault("KALIB_PRESET", "smoke")
os.environ.setdefault("KALIB_OUT", tempfile.mkdtemp(prefix="kalib-nbval-"))
