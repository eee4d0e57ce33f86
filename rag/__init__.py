"""Retrieval-augmented generation for the Vietnamese maths tutor."""
import time as _time

STARTED = _time.perf_counter()  # when the package was first imported: `--profile` counts imports from here
