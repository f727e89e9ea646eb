"""Log records below WARNING from global rank zero only: every DDP rank runs the same code and would repeat them."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only


class RankZeroInfo(logging.Filter):
    """Passes warnings and errors from every rank, everything else from global rank zero (Lightning's rank)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(rank_zero_only, "rank", 0) == 0


def filter_to_rank_zero(logger: logging.Logger | None = None) -> None:
    """Add :class:`RankZeroInfo` to every handler of ``logger`` (default: the root logger, as Hydra sets it up)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RankZeroInfo) for f in handler.filters):
            handler.addFilter(RankZeroInfo())
