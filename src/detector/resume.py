"""Resuming a run: the checkpoint carries the run's resolved config, which comes back; a command-line override of
any key outside ``resume_may_differ`` that changes its value is refused with the key's name."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONFIG_KEY = "detector_config"  # the checkpoint entry holding the run's resolved config (plain containers)
ALWAYS_MAY_DIFFER = ("ckpt_path", "resume_may_differ", "run_dir")  # how a resume is asked for, not what it trains


class StoreRunConfig(L.Callback):
    """Puts the run's resolved config into every checkpoint it writes."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config


class ResumeRefused(ValueError):
    """The resume asks for a setting the run cannot change; the message names each key."""


def override_keys(overrides: Iterable[str]) -> list[str]:
    """Config keys set by command-line overrides (``a.b=1``, ``+a.b=1``, ``~a``, ``group=option``)."""
    keys = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra") and key not in keys:
            keys.append(key.replace("/", "."))
    return keys


def _allowed(key: str, may_differ: Sequence[str]) -> bool:
    return any(key == m or key.startswith(m.rstrip(".") + ".") for m in (*ALWAYS_MAY_DIFFER, *may_differ))


_ABSENT = object()


def _value(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _rebase(node: Any, old: str, new: str) -> Any:
    """Paths inside the run folder (``${run_dir}/weights``, ...) follow the run into ``new``."""
    if isinstance(node, dict):
        return {k: _rebase(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v, old, new) for v in node]
    if isinstance(node, str) and old and (node == old or node.startswith(old.rstrip("/") + "/")):
        return new + node[len(old) :]
    return node


def restore_config(cfg: DictConfig, stored: dict[str, Any], overrides: Iterable[str]) -> DictConfig:
    """The stored config, with the allowed overrides applied from ``cfg``; other changed overrides are refused."""
    may_differ = list(cfg.get("resume_may_differ") or [])
    old = OmegaConf.create(_rebase(stored, str(stored.get("run_dir")), str(cfg.run_dir)))
    newer = [key for key in cfg if key not in old]
    for key in newer:  # settings added since the checkpoint was written: their defaults
        old[key] = cfg[key]
    if newer:
        log.info("The checkpoint's config predates %s: using their defaults", ", ".join(map(str, newer)))
    refused, taken = [], []
    for key in override_keys(overrides):
        now, before = _value(cfg, key), _value(old, key)
        if _allowed(key, may_differ):
            taken.append(key)
        elif now != before:
            was = "absent" if before is _ABSENT else repr(before)
            refused.append(f"{key}={'absent' if now is _ABSENT else repr(now)} (the run has {was})")
    if refused:
        hint = (
            " Extending epochs is refused: the LR schedule, warmup and close_mosaic were planned for the run's "
            "epochs; start a new run instead."
            if any(r.startswith("epochs=") for r in refused)
            else ""
        )
        raise ResumeRefused(
            f"cannot resume with {'; '.join(refused)}. On resume only {', '.join(may_differ)} may change "
            f"(resume_may_differ); drop the other overrides to resume with the run's own settings.{hint}"
        )
    for key in taken:
        value = _value(cfg, key)
        if value is not _ABSENT:
            OmegaConf.update(old, key, value, merge=False, force_add=True)
        elif _value(old, key) is not _ABSENT:  # removed on the command line (~key)
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(old, parent) if parent else old
            node.pop(leaf)
    for key in ALWAYS_MAY_DIFFER:
        if key in cfg:
            old[key] = _value(cfg, key)
    if taken:
        log.info("Resuming with the run's config, except %s", ", ".join(taken))
    return old
