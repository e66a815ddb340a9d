import pytest
import torch

from gmnn.nn.functional.dispatch import capacity_of, capacity_slots, gather_into_slots, group_by_expert, read_from_slots


def test_capacity_of_hand_computed() -> None:
    assert capacity_of(100, 2, 8, 1.0) == 25
    assert capacity_of(100, 1, 8, 1.25) == 16  # ceil(15.625)
    assert capacity_of(3, 1, 8, 0.1) == 1
    assert capacity_of(4, 2, 1, 2.0) == 4  # never more than the tokens
    with pytest.raises(ValueError, match="capacity_factor"):
        capacity_of(4, 1, 2, 0.0)


def test_capacity_slots_hand_computed() -> None:
    slots, kept = capacity_slots(torch.tensor([1, 0, 1, 1, 0, 2]), num_experts=3, capacity=2)
    # expert 1 gets pairs 0, 2 (slots 2, 3), pair 3 overflows; expert 0 pairs 1, 4 (slots 0, 1); expert 2 pair 5 (slot 4)
    assert slots.tolist() == [2, 0, 3, 6, 1, 4]
    assert kept.tolist() == [True, True, True, False, True, True]


def test_gather_and_read_round_trip() -> None:
    x = torch.arange(6.0).view(3, 2)
    slots = torch.tensor([2, 0, 4, 1])  # slot 4 = dropped (4 slots)
    rows = gather_into_slots(x, torch.tensor([0, 1, 2, 2]), slots, num_slots=4)
    assert rows.tolist() == [[2, 3], [4, 5], [0, 1], [0, 0]]
    assert read_from_slots(rows, slots).tolist() == [[0, 1], [2, 3], [0, 0], [4, 5]]


def test_group_by_expert_orders_stably() -> None:
    order, counts = group_by_expert(torch.tensor([2, 0, 2, 0]), 4)
    assert order.tolist() == [1, 3, 0, 2] and counts == [2, 0, 2, 0]
