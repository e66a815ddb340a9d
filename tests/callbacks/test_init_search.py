"""InitSearch: briefly train several initialisations, keep the best on the validation set."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.callbacks import InitSearch
from gmnn.data import ToyDataModule
from gmnn.models import DenseMoE
from tests.conftest import tiny_trainer


def _model() -> DenseMoE:
    return DenseMoE(input_shape=[2], num_classes=2, num_experts=3, expert_hidden=[16], gate_hidden=[16])


def test_training_starts_from_the_candidate_with_the_lowest_validation_nll() -> None:
    torch.manual_seed(0)
    model = _model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    search = InitSearch(candidates=3, steps=20, lr=0.01)
    data = ToyDataModule(problem="checkerboard", num_samples=800, batch_size=64)
    trainer = tiny_trainer(max_steps=1, limit_val_batches=1.0, callbacks=[search])
    scores_after: list[float] = []

    original = model.on_train_batch_start

    def record(batch, batch_idx):  # noqa: ANN001, ANN202
        if not scores_after:
            scores_after.append(search._validate(trainer, model))
        return original(batch, batch_idx)

    model.on_train_batch_start = record
    trainer.fit(model, data)
    assert len(search.scores) == 3 and len(set(search.scores)) == 3
    assert scores_after[0] == pytest.approx(min(search.scores), rel=1e-5)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in initial.items())


def test_candidates_follow_the_global_seed() -> None:
    def scores(seed: int) -> list[float]:
        torch.manual_seed(seed)
        model = _model()
        search = InitSearch(candidates=2, steps=5)
        data = ToyDataModule(problem="checkerboard", num_samples=400, batch_size=64, seed=0)
        tiny_trainer(max_steps=1, limit_val_batches=1.0, callbacks=[search]).fit(model, data)
        return search.scores

    assert scores(0) == scores(0)
    assert scores(0)[1] != scores(1)[1]


def test_one_candidate_changes_nothing() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    search = InitSearch(candidates=1)
    search.on_train_start(tiny_trainer(), model)
    assert search.scores == [] and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_without_validation_data_the_search_is_a_clear_error() -> None:
    data = DataLoader(TensorDataset(torch.randn(64, 2), torch.randint(0, 2, (64,))), batch_size=16)
    with pytest.raises(ValueError, match="InitSearch scores initialisations on the validation set"):
        tiny_trainer(max_epochs=1, callbacks=[InitSearch(candidates=2, steps=2)]).fit(_model(), data)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"candidates": 0}, "candidates"), ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"),
])
def test_bad_arguments_name_the_parameter(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InitSearch(**kwargs)


def test_regression_models_are_scored_by_their_own_nll() -> None:
    from gmnn.data import ToyRegressionDataModule
    from gmnn.models import RegressionMoE

    torch.manual_seed(0)
    search = InitSearch(candidates=2, steps=5)
    data = ToyRegressionDataModule("sine", num_samples=400, batch_size=64)
    tiny_trainer(max_steps=1, limit_val_batches=1.0, callbacks=[search]).fit(RegressionMoE(input_shape=[1], num_classes=1, num_experts=2), data)
    assert len(search.scores) == 2 and all(map(math.isfinite, search.scores))
