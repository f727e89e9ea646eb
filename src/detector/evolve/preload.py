"""What a trial forkserver imports once (see trial): the training entry point and what a run imports lazily.

Every module a child would import on its own is imported here, once per sweep: the callbacks, albumentations (the
augmentation extras), TensorBoard's writer (the default logger), scipy's k-means (AutoAnchor) and Hydra's plugin
scan (about 0.4 s a child on a 2-core machine)."""

import warnings

# A forked child re-runs the sweep's main module by name (multiprocessing's main fix-up); detector.train is already
# imported here, which is the point, so runpy's warning about it is expected.
warnings.filterwarnings("ignore", message="'detector.train' found in sys.modules", category=RuntimeWarning)

import detector.train  # noqa: E402,F401

for _name in ("albumentations", "scipy.cluster.vq", "torch.utils.tensorboard", "detector.anchor_search",
              "detector.data.shapes", "detector.callbacks.autoanchor", "detector.callbacks.ema",
              "detector.callbacks.progress", "detector.callbacks.results_csv", "detector.callbacks.median_stop",
              "detector.callbacks.rng_state", "detector.callbacks.early_stopping"):  # fmt: skip
    try:
        __import__(_name)
    except ImportError:  # an optional part missing here fails in the child, with the child's own message
        pass

from hydra.core.plugins import Plugins  # noqa: E402

Plugins.instance()  # scans hydra_plugins (launchers, sweepers) once
