"""Narrow filters for third-party warnings and notices that every gmnn command would otherwise print.

Each filter matches one message and names why it is not the user's concern. Nothing of
gmnn's own making is filtered here: gmnn's own code must not warn on a correct run.
"""

from __future__ import annotations

import logging
import warnings

THIRD_PARTY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # pytorch_lightning's own use of a torch pytree API it has not caught up with (torch >= 2.10)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, "pytorch_lightning|lightning.pytorch"),
    # lightning_fabric's all_gather calls a torch function torch deprecated; gmnn does not call it
    (r"torch\.distributed\.nn\.functional\.all_gather is deprecated", Warning, "lightning_fabric|lightning.fabric"),
    # train/* metrics are per-process on purpose: syncing them would put a collective into whichever
    # hook first reads the epoch metrics (rank zero's progress bar): a deadlock under DDP
    (r"It is recommended to use `self\.log\('train/", UserWarning, "pytorch_lightning|lightning.pytorch"),
)


#: Lightning's suggestions to install its cloud services' packages (``litlogger``, ``litmodels``), logged at the start
#: of every run through these loggers: nothing about the run itself
LIGHTNING_TIP = "\N{ELECTRIC LIGHT BULB} Tip:"
LIGHTNING_NOTICE_LOGGERS = tuple(f"{package}.utilities.rank_zero" for package in (
    "pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"))


class DropLightningTips(logging.Filter):
    """Drops the log records whose message starts with :data:`LIGHTNING_TIP`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(LIGHTNING_TIP))


def silence_known_warnings() -> None:
    """Install the filters of :data:`THIRD_PARTY_WARNINGS`, and :class:`DropLightningTips` on Lightning's notice
    loggers (idempotent)."""
    for message, category, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in LIGHTNING_NOTICE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLightningTips) for f in logger.filters):
            logger.addFilter(DropLightningTips())
