"""A clean console: third-party lines a user cannot act on are dropped, each named here with why."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

# Lightning's advertisements for its cloud products ("💡 Tip: ... try installing litlogger / litmodels").
LIGHTNING_TIP = "💡 Tip"
# (message regex, why it is safe to drop)
IGNORED_WARNINGS = (
    # Lightning 2.6 calls a torch API that torch 2.14 deprecated, inside its own pytree helper: nothing to change here.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "Lightning's own use of a deprecated torch API"),
    # Our epoch metrics are computed from every rank's gathered validation records (module._gather_validation), so
    # every rank logs the same values; syncing them again would only average equal numbers.
    (r"It is recommended to use `self\.log\('(metrics|val|fitness|mAP50|x)/?", "identical on every rank"),
)


class DropLightningTips(logging.Filter):
    """Drops Lightning's product tips from its rank-zero logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LIGHTNING_TIP)


def quiet_third_party() -> None:
    """Install the filters (idempotent): Lightning's tips, and the warnings in IGNORED_WARNINGS."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropLightningTips) for f in logger.filters):
        logger.addFilter(DropLightningTips())
    for pattern, _why in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def exit_on_user_error(errors: tuple[type[Exception], ...], fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; one of ``errors`` (a setting, a path or a file the user gave) is logged as one line and ends
    the process with status 1 instead of a traceback (``HYDRA_FULL_ERROR=1`` re-raises it)."""
    try:
        return fn(*args)
    except errors as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        logging.getLogger(fn.__module__).error("%s", e)
        sys.exit(1)
