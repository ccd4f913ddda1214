"""nbval runs the lesson notebooks in order on the lesson preset (a few minutes in all, with numbers far
above chance, so the notebooks' asserts check meaning as well as mechanics), sharing one output directory,
so 02–05 find what 01–04 trained, and the solutions after them re-use it. The parameters cell reads these
variables; KALIB_PRESET=smoke gives a faster, mechanics-only run. Under pytest-xdist one worker runs every
cell, in order (the conftest.py above this one)."""

import os
import tempfile

os.environ.setdefault("KALIB_PRESET", "lesson")
os.environ.setdefault("KALIB_OUT", tempfile.mkdtemp(prefix="kalib-nbval-"))
