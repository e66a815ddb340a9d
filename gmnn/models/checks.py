"""Run-time checks of a MoE LightningModule: first batches, labels, precision, finite losses, input shapes.

Kept out of ``base.py`` so that the training loop stays short: the module calls
:func:`check_batch` once per stage and feeds every training loss to a
:class:`FiniteLossGuard`. Checks of a checkpoint against a model live in
:mod:`gmnn.checkpoints.compatibility`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
NEVER = torch.iinfo(torch.int64).max
TASK_TERMS = ("nll", "experts")  # the task loss; "experts": the experts' loss of dual-temperature training


def check_batch(x: Tensor, y: Tensor, num_classes: int, stage: str) -> None:
    """Raise ``ValueError`` when a batch's labels do not fit the model (one host sync for their range).

    The inputs' shape is checked by the model's ``forward`` on every call (no sync needed).

    Args:
        x: Inputs ``[B, ...]``.
        y: Labels, expected integers ``[B]`` in ``[0, num_classes)``.
        num_classes: The model's number of classes.
        stage: Where the batch comes from, named in the message (e.g. ``"val batch 3"``).
    """
    if tuple(y.shape) != (x.shape[0],):
        raise ValueError(f"{stage}: labels must have shape [{x.shape[0]}] (one per input), got {list(y.shape)}")
    check_labels(y, num_classes, stage)


def check_labels(y: Tensor, num_classes: int, stage: str) -> None:
    """Raise ``ValueError`` unless ``y`` holds integers in ``[0, num_classes)`` (one host sync)."""
    if y.dtype not in INTEGER_DTYPES:
        raise ValueError(f"{stage}: labels must be an integer tensor, got dtype {y.dtype}")
    if y.numel():
        low, high = (int(v) for v in torch.stack([y.min(), y.max()]).tolist())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{stage}: labels must lie in [0, num_classes={num_classes}), got values in [{low}, {high}]"
            )


def check_training_precision(precision: str) -> None:
    """Refuse to train in pure float16 (``16-true``), where Adam's ``eps = 1e-8`` rounds to 0.

    The first update divides by ``sqrt(v) + 0`` for tiny second moments and the loss
    becomes inf within a few steps; ``16-mixed`` keeps float32 weights and optimizer
    state, and ``bf16-true`` has float32's range. Evaluation in ``16-true`` is fine.
    """
    if str(precision) in ("16-true", "16", "half"):
        raise ValueError(
            f"precision={precision!r} cannot train gmnn's models: Adam's eps 1e-8 is 0 in float16 and the loss "
            "turns inf within a few steps; use --trainer.precision=16-mixed or bf16-true (bf16-mixed, 32, 64-true also work)"
        )


class FiniteLossGuard:
    """Stops training with a clear error when a loss term becomes NaN or inf.

    :meth:`record` notes, on the device and without a host sync, the first
    step at which each named term was non-finite. :meth:`check` reads those
    steps back (one small sync, and one ``all_gather`` across processes so
    that every rank raises together) and raises ``FloatingPointError`` naming
    the term(s) and the step. The module calls :meth:`check` every step when
    that is free (one process on CPU, where tensors already live on the host)
    and otherwise every ``log_every_n_steps`` steps, when Lightning syncs to
    log anyway, and at the end of each training epoch, before ``last.ckpt``
    is written.
    """

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.first: Tensor | None = None  # [len(names)] first non-finite step per term, NEVER if none

    @property
    def first_bad(self) -> dict[str, Tensor]:
        """The first non-finite step of every term seen (``NEVER`` when it stayed finite)."""
        return dict(zip(self.names, self.first)) if self.first is not None else {}

    def record(self, terms: Mapping[str, Tensor], step: int) -> None:
        """Remember ``step`` for every term that is non-finite now and was finite so far (a few tiny kernels)."""
        values = torch.stack([value.detach() for value in terms.values()])  # scalar terms, as the loss sums them
        names = tuple(terms)
        if names != self.names:  # first step, or the set of terms changed: carry the record over
            known = self.first_bad
            never = values.new_full((), NEVER, dtype=torch.int64)
            self.first = torch.stack([known.get(name, never).to(values.device) for name in names])
            self.names = names
        self.first = torch.minimum(self.first, torch.where(torch.isfinite(values), NEVER, step))

    def check(self, gather: Callable[[Tensor], Tensor] | None = None, task_terms: tuple[str, ...] = TASK_TERMS) -> None:
        """Raise ``FloatingPointError`` if any recorded term went non-finite (on any process).

        Args:
            gather: ``LightningModule.all_gather`` under several processes, else ``None``.
            task_terms: Names of task losses; the other terms are regularizers.
        """
        if self.first is None:
            return
        names, steps = list(self.names), self.first
        if gather is not None:
            gathered = gather(steps)
            steps = gathered.min(dim=0).values if gathered.dim() > 1 else gathered
        steps_list = steps.tolist()
        first = min(steps_list)
        if first == NEVER:
            return
        culprits = [name for name, step in zip(names, steps_list) if step == first]
        described = ", ".join(
            f"the task loss '{name}'" if name in task_terms else f"the regularizer '{name}'" for name in culprits
        )
        raise FloatingPointError(
            f"training loss became NaN or inf at global step {first}: {described} went non-finite. "
            "Lower the learning rate or the regularizer's weight, check the inputs for NaN/inf, "
            "or resume from an earlier checkpoint."
        )


class BatchGuard:
    """Notes, on the device and without a host sync, the first batch of an epoch whose loss was NaN/inf
    or whose labels left ``[0, num_classes)`` (e.g. ``-100`` padding, which the loss would silently skip).

    :meth:`check` reads the record back (one small sync; under several processes an
    ``all_gather`` that every process reaches at the same point) and raises naming the batch.
    """

    def __init__(self) -> None:
        self.first: Tensor | None = None  # [2]: first batch with a non-finite loss, first with bad labels

    def record(self, loss: Tensor, labels_bad: Tensor | None, batch_idx: int) -> None:
        """Add one batch: its loss and, for classification, whether any label is out of range."""
        bad = torch.stack([~torch.isfinite(loss.detach()).all(), labels_bad if labels_bad is not None
                           else torch.zeros((), dtype=torch.bool, device=loss.device)])
        steps = torch.where(bad, batch_idx, NEVER)
        self.first = steps if self.first is None else torch.minimum(self.first, steps)

    def check(self, stage: str, num_classes: int, gather: Callable[[Tensor], Tensor] | None = None) -> None:
        """Raise ``ValueError`` (labels) or ``FloatingPointError`` (loss) for the first bad batch; then forget it."""
        if self.first is None:
            return
        first, self.first = self.first, None
        if gather is not None:
            gathered = gather(first)
            first = gathered.min(dim=0).values if gathered.dim() > 1 else gathered
        loss_batch, label_batch = first.tolist()
        if label_batch != NEVER:
            raise ValueError(
                f"{stage} batch {label_batch}: labels must lie in [0, num_classes={num_classes}) "
                "(a negative padding label such as -100 is not supported)"
            )
        if loss_batch != NEVER:
            raise FloatingPointError(
                f"{stage} batch {loss_batch}: the loss is NaN or inf; check the {stage} inputs for NaN/inf"
            )


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """``input_shape`` as a tuple; ``ValueError`` unless it is a non-empty list of positive sizes."""
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be a non-empty list of positive sizes, got {list(input_shape)}")
    return shape
