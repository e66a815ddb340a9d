"""Dense mixture of experts."""

from __future__ import annotations

from gmnn.models.base import MoEModule


class DenseMoE(MoEModule):
    """Dense mixture of experts (Jacobs, Jordan, Nowlan & Hinton, 1991).

    Every expert sees every sample; the prediction is
    ``log sum_i g_i(x) p_i(y|x)`` with ``g = softmax(gate(x) / T)``, computed
    with logsumexp. All arguments are those of :class:`~gmnn.models.base.MoEModule`.
    """
