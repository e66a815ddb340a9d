"""Gate temperature schedules: pure functions of the epoch, so resuming needs no state."""

from __future__ import annotations

from gmnn.validation import check_non_negative, check_positive

MIN_TEMPERATURE = 1e-4  # logits of a few thousand over 1e-4 stay far inside float32 (and bfloat16) range


def check_temperature_schedule(temperature: float, decay: float, start: int, floor: float) -> None:
    """Raise ``ValueError`` for a temperature <= 0, a negative decay or start, or a floor above the start temperature."""
    for name, value in (("temperature", temperature), ("temperature_min", floor)):
        check_positive(name, value)
        if value < MIN_TEMPERATURE:
            raise ValueError(
                f"{name} must be >= {MIN_TEMPERATURE:g} (below it logits / T overflow and the gate becomes NaN), got {value:g}"
            )
    check_non_negative("temperature_decay", decay)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"temperature_decay_start must be an integer >= 0, got {start!r}")
    if decay > 0 and floor > temperature:
        raise ValueError(f"temperature_min must be <= temperature={temperature} when decaying, got {floor}")


def scheduled_temperature(epoch: int, temperature: float, decay: float = 0.0, start: int = 0, floor: float = 0.05) -> float:
    """Gate temperature at ``epoch`` under inverse decay.

    ``T_start = temperature`` and ``T_{e+1} = T_e / (1 + decay * (e - start))``
    for ``e >= start``, never below ``floor``; ``decay = 0`` keeps T constant.

    Args:
        epoch: Current epoch (0-based).
        temperature: Initial temperature T > 0.
        decay: Decay rate d >= 0.
        start: Epoch at which the decay starts.
        floor: Lowest temperature.
    """
    value = float(temperature)
    if decay <= 0:
        return value
    for e in range(start, epoch):
        value = max(value / (1.0 + decay * (e - start)), floor)
    return value
