"""What a trial forkserver imports once (see trial): the training entry point and everything it imports."""

import warnings

# A forked child re-runs the sweep's main module by name (multiprocessing's main fix-up); detector.train is already
# imported here, which is the point, so runpy's warning about it is expected.
warnings.filterwarnings("ignore", message="'detector.train' found in sys.modules", category=RuntimeWarning)

import detector.train  # noqa: E402,F401
