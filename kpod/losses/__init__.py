"""Per-token losses (registry kind ``loss``)."""

from kpod.losses import kd as kd  # noqa: F401  (registers)
from kpod.losses import mcc_kd as mcc_kd  # noqa: F401  (registers)
from kpod.losses import task_losses as task_losses  # noqa: F401  (registers)
from kpod.losses import token_ce as token_ce  # noqa: F401  (registers)
from kpod.losses.base import Loss, TokenLoss, TokenLossBase, per_token_nll

__all__ = ["Loss", "TokenLoss", "TokenLossBase", "per_token_nll"]
