"""The paper's 2-D toy classification problems, generated from a seed."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, TensorDataset, random_split

from gmnn.data import reference_toys
from gmnn.data.splits import SplitDataModule
from gmnn.validation import check_choice, check_non_negative, check_positive_int


def _checkerboard(points: Tensor, cells: int) -> Tensor:
    index = ((points + 1) / 2 * cells).floor().clamp(0, cells - 1).long()
    return (index[:, 0] + index[:, 1]) % 2


def _uniform(n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, 2, generator=generator) * 2 - 1


def checkerboard(n: int, noise: float, generator: torch.Generator, cells: int = 2) -> tuple[Tensor, Tensor]:
    """Uniform points on [-1, 1]^2 labelled by a ``cells`` x ``cells`` checkerboard."""
    points = _uniform(n, generator)
    return points + noise * torch.randn(n, 2, generator=generator), _checkerboard(points, cells)


def rotated_checkerboard(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A 2x2 checkerboard rotated by 45 degrees (its cell borders are diagonals)."""
    points = _uniform(n, generator)
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    rotated = points @ torch.tensor([[c, -s], [s, c]])
    return points + noise * torch.randn(n, 2, generator=generator), _checkerboard(rotated / math.sqrt(2), 2)


def circles(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two concentric rings: radius 0.4 (class 0) and 0.9 (class 1)."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    radius = 0.4 + 0.5 * labels + (noise + 0.05) * torch.randn(n, generator=generator)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], 1), labels


def _blobs(centres: Tensor, labels_of_centre: Tensor, n: int, std: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    which = torch.randint(0, len(centres), (n,), generator=generator)
    return centres[which] + std * torch.randn(n, 2, generator=generator), labels_of_centre[which]


def two_blobs_vs_one(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Class 0: blobs at (-0.6, -0.6) and (0.6, 0.6); class 1: a blob between them at the origin."""
    centres = torch.tensor([[-0.6, -0.6], [0.6, 0.6], [0.0, 0.0], [0.0, 0.0]])
    return _blobs(centres, torch.tensor([0, 0, 1, 1]), n, 0.15 + noise, generator)


def gaussian_clusters(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Three Gaussian clusters on a circle of radius 0.6, one class each."""
    angles = torch.tensor([90.0, 210.0, 330.0]) * math.pi / 180
    centres = 0.6 * torch.stack([angles.cos(), angles.sin()], 1)
    return _blobs(centres, torch.arange(3), n, 0.2 + noise, generator)


#: Centres of ``split_discs``' discs, disc q holding classes 2q and 2q+1.
DISC_CENTRES = ((-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5))
DISC_RADIUS = 0.35


def split_discs(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Four discs, each cut in two classes: 8 classes, two per disc.

    Disc q (radius 0.35, centred at (-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5),
    (0.5, 0.5) for q = 0..3) holds classes 2q and 2q+1, split by a line
    through its centre whose normal points at q * 45 degrees: a sample is
    class 2q+1 on the side the normal points to. Points are uniform on the
    discs (about n/4 per disc); ``noise`` moves them after labelling. A gate
    can route each disc to its own expert, which then owns two classes.
    """
    disc = torch.randint(0, len(DISC_CENTRES), (n,), generator=generator)
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    radius = DISC_RADIUS * torch.rand(n, generator=generator).sqrt()
    offset = torch.stack([radius * angle.cos(), radius * angle.sin()], 1)
    normal_angle = disc.float() * math.pi / 4
    normal = torch.stack([normal_angle.cos(), normal_angle.sin()], 1)
    labels = 2 * disc + ((offset * normal).sum(1) > 0).long()
    points = torch.tensor(DISC_CENTRES)[disc] + offset
    return points + noise * torch.randn(n, 2, generator=generator), labels


def stratified_split(labels: Tensor, val_fraction: float, test_fraction: float,
                     generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Train, validation and test indices holding ``round(fraction * n_c)`` random samples of every class c."""
    parts: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val, n_test = round(len(members) * val_fraction), round(len(members) * test_fraction)
        for part, chosen in zip(parts, (members[n_val + n_test:], members[:n_val], members[n_val:n_val + n_test])):
            part.append(chosen)
    return tuple(torch.cat(part).sort().values for part in parts)  # type: ignore[return-value]


Generator = Callable[[int, float, torch.Generator], tuple[Tensor, Tensor]]
PROBLEMS: dict[str, tuple[Generator, int]] = {
    "checkerboard": (checkerboard, 2),
    "checkerboard_4x4": (lambda n, noise, g: checkerboard(n, noise, g, cells=4), 2),
    "rotated_checkerboard": (rotated_checkerboard, 2),
    "circles": (circles, 2),
    "two_blobs_vs_one": (two_blobs_vs_one, 2),
    "gaussian_clusters": (gaussian_clusters, 3),
    "split_discs": (split_discs, 8),
    # the reference implementation's problems (gmnn/data/reference_toys.py)
    "quadrants_rotated": (reference_toys.quadrants_rotated, 2),
    "disc": (reference_toys.disc, 2),
    "board_3x2": (reference_toys.board_3x2, 2),
}
"""The 2-D toy problems by name: a generator ``(n, noise, torch.Generator) -> (x, y)`` and the number of classes."""


class ToyDataModule(SplitDataModule):
    """The paper's 2-D toy problems, generated reproducibly with no download.

    Problems: ``checkerboard`` (2x2), ``checkerboard_4x4``,
    ``rotated_checkerboard``, ``circles``, ``two_blobs_vs_one`` and
    ``gaussian_clusters`` (3 classes), ``split_discs`` (8 classes, two per
    disc: the first run's problem); and the reference implementation's
    (``helper/data_generator.py`` of ``yamsgithub/modular_deep_learning``):
    ``quadrants_rotated`` (the 4x4 board with its quadrants rotated by 30, 45,
    60 and 120 degrees), ``disc`` and ``board_3x2``. Inputs lie roughly in
    [-1, 1]^2. The reference splits 80/20 into train and test, stratified by
    class: ``val_fraction=0``, ``test_fraction=0.2``, ``stratify=True``.

    Args:
        problem: Which problem to generate.
        num_samples: Total samples, split into train/val/test.
        noise: Standard deviation of Gaussian input noise (added to the cluster spread for blob problems).
        val_fraction: Fraction of samples for validation.
        test_fraction: Fraction of samples for testing.
        batch_size: Samples per batch.
        seed: Seed of the data and of the split.
        num_workers: DataLoader worker processes.
        stratify: Split every class in the same fractions (the reference's ``train_test_split(..., stratify=y)``).
    """

    #: name -> (generator, number of classes); subclasses swap in their own problems.
    problems: dict[str, tuple[Generator, int]] = PROBLEMS

    def __init__(
        self,
        problem: str = "checkerboard",
        num_samples: int = 4000,
        noise: float = 0.0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        stratify: bool = False,
    ) -> None:
        super().__init__()
        check_choice("problem", problem, tuple(self.problems))
        check_positive_int("num_samples", num_samples)
        check_non_negative("noise", noise)
        check_positive_int("batch_size", batch_size)
        check_non_negative("num_workers", num_workers)
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= fraction < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {fraction}")
            if fraction > 0 and round(num_samples * fraction) == 0:
                raise ValueError(
                    f"{name}={fraction} of num_samples={num_samples} is 0 samples: "
                    f"raise num_samples or {name}, or set {name}=0 to have no such split"
                )
        num_train = num_samples - round(num_samples * val_fraction) - round(num_samples * test_fraction)
        if num_train < 1:
            raise ValueError(f"val_fraction + test_fraction leave no training samples out of num_samples={num_samples}")
        self.save_hyperparameters()
        self.input_shape = [2]
        self.set_sizes(self.problems[problem][1])
        self.splits: dict[str, TensorDataset] = {}

    def set_sizes(self, size: int) -> None:
        """Record the problem's output size (here: the number of classes)."""
        self.num_classes = size

    def generate(self) -> tuple[Tensor, Tensor]:
        """All ``num_samples`` points ``[N, 2]`` and labels ``[N]`` of the problem."""
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.seed)
        return self.problems[hp.problem][0](hp.num_samples, hp.noise, generator)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        dataset = TensorDataset(*self.generate())
        generator = torch.Generator().manual_seed(hp.seed + 1)
        if hp.get("stratify"):
            parts = stratified_split(dataset.tensors[1], hp.val_fraction, hp.test_fraction, generator)
            self.splits = {name: Subset(dataset, idx) for name, idx in zip(("train", "val", "test"), parts)}
            return
        sizes = [round(len(dataset) * hp.val_fraction), round(len(dataset) * hp.test_fraction)]
        sizes = [len(dataset) - sum(sizes), *sizes]
        parts = random_split(dataset, sizes, generator=generator)
        self.splits = dict(zip(("train", "val", "test"), parts))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        sampler = None if shuffle else self.eval_sampler(self.splits[split])
        return DataLoader(
            self.splits[split], batch_size=self.hparams.batch_size, shuffle=shuffle, sampler=sampler,
            num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0,
        )
