"""MediaPipe's C++ start-up lines, kept out of the console while anything else on stderr still shows.

MediaPipe's graphs log through absl and TensorFlow Lite straight to file descriptor 2 when they start
("Created TensorFlow Lite XNNPACK delegate", absl's notice that logging was not initialised, a warning per
graph about feedback tensors) and on the first face of a process (NORM_RECT without IMAGE_DIMENSIONS); no
environment variable or Python logger reaches them. ``native_stderr_filtered`` points fd 2 at a temporary
file for the duration and then writes back every line that is not one of these, so real errors still show.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

START_UP_LINES = (
    "Created TensorFlow Lite XNNPACK delegate",
    "All log messages before absl::InitializeLog() is called",
    "inference_feedback_manager.cc",
    "landmark_projection_calculator.cc",
)
_REDIRECTING = threading.Lock()  # fd 2 is process-wide: one redirection at a time


@contextlib.contextmanager
def native_stderr_filtered(noise: tuple[str, ...] = START_UP_LINES) -> Iterator[None]:
    """Run the body with fd 2 captured; afterwards write the captured lines that match no ``noise`` back to it."""
    with _REDIRECTING, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                if not any(n in line for n in noise)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
