"""detector.console: Lightning's product tips and the warnings we know to be moot are dropped, nothing else."""

from __future__ import annotations

import logging
import warnings

from detector.console import quiet_third_party


def test_tips_and_moot_warnings_are_dropped_and_the_rest_kept(caplog):
    quiet_third_party()
    quiet_third_party()  # idempotent
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        lightning_log.info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
        lightning_log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=1)
        warnings.warn("It is recommended to use `self.log('metrics/recall', ..., sync_dist=True)` when ...",
                      stacklevel=1)  # fmt: skip
        warnings.warn("It is recommended to use `self.log('my_metric', ..., sync_dist=True)` when ...", stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message)[:40] for w in seen] == ["It is recommended to use `self.log('my_m", "something else"]
