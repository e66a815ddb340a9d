"""``gmnn analyze``: the routing report of a gmnn checkpoint on a split of its run's data."""

from __future__ import annotations

import argparse
from pathlib import Path

from gmnn import pl
from gmnn.analysis.report import routing_report, write_report
from gmnn.validation import check_positive_int


def main(args: list[str] | None = None) -> None:
    """``gmnn analyze --ckpt_path CKPT --config CONFIG [--out DIR] [--split val] [--max_batches N]``.

    Loads a gmnn checkpoint, builds the data module of the run's config (its
    ``config.yaml``, by default next to the checkpoint's run folder), and writes
    :func:`routing_report` of the chosen split as ``routing_{split}.csv`` and one
    ``routing_{split}_{layer}.png`` per layer (:func:`write_report`).
    """
    parser = argparse.ArgumentParser(prog="gmnn analyze", description=main.__doc__)
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--config", default=None, help="the run's config.yaml (default: beside checkpoints/)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/routing)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--max_batches", type=int, default=None, help="at most this many batches (>= 1; default: all)")
    parsed = parser.parse_args(args)
    if parsed.max_batches is not None:
        check_positive_int("--max_batches", parsed.max_batches)
    import yaml
    from jsonargparse import ArgumentParser

    from gmnn.checkpoints.variants import saved_class

    ckpt = Path(parsed.ckpt_path)
    if not ckpt.is_file():
        raise ValueError(f"--ckpt_path {ckpt} does not exist")
    config_path = Path(parsed.config) if parsed.config else ckpt.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"--config {config_path} does not exist: pass the run's config.yaml")
    if (model_class := saved_class(ckpt)) is None:
        raise ValueError(f"--ckpt_path {ckpt} records no model class: is it a gmnn checkpoint?")
    model = model_class.load_from_checkpoint(ckpt, map_location="cpu")
    data_parser = ArgumentParser()
    data_parser.add_subclass_arguments(pl.LightningDataModule, "data")
    data_config = yaml.safe_load(config_path.read_text())["data"]
    data = data_parser.instantiate_classes(data_parser.parse_object({"data": data_config})).data
    data.setup("fit" if parsed.split != "test" else "test")
    loader = {"train": data.train_dataloader, "val": data.val_dataloader, "test": data.test_dataloader}[parsed.split]()
    rows, matrices = routing_report(model, loader, num_labels=getattr(data, "num_labels", None),
                                    max_batches=parsed.max_batches)
    out = Path(parsed.out) if parsed.out else ckpt.parent.parent / "routing"
    for path in write_report(rows, matrices, out, getattr(data, "label_names", None), split=parsed.split):
        print(path)
