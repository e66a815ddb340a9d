"""``gmnn analyze``: the routing report of a gmnn checkpoint or of a saved Hugging Face MoE model, on a labelled split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gmnn import pl
from gmnn.analysis.hf import load_model_folder, token_names
from gmnn.analysis.report import format_table, routing_report, write_report
from gmnn.validation import check_non_negative, check_positive_int

#: The data of ``--hf_model`` without ``--data``: byte tokens labelled by their source.
DEFAULT_DATA = "gmnn.data.MixedSourceTextDataModule"

USAGE = ("gmnn analyze (--ckpt_path CKPT [--config CONFIG] | --hf_model DIR) [--data CLASS_PATH|CONFIG.yaml] "
         "[--data.init_args.NAME VALUE ...] [--split val] [--out DIR] [--max_batches N] [--top_tokens N]")


def _build_data(data_args: list[str], config_data: Any) -> pl.LightningDataModule:
    """The data module of ``--data`` / ``--data.*`` arguments, over the one of the run's config when given."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="gmnn analyze", exit_on_error=False)
    parser.add_subclass_arguments(pl.LightningDataModule, "data")
    defaults = [] if config_data is None else ["--data", __import__("json").dumps(config_data)]
    try:
        parsed = parser.parse_args([*defaults, *data_args])
    except Exception as error:  # jsonargparse's ArgumentError: one line naming the argument
        first = next((line.strip() for line in str(error).splitlines() if line.strip().startswith("- ")),
                     str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
        raise ValueError(f"--data: {first.lstrip('- ')}") from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(parsed).data


def main(args: list[str] | None = None) -> None:
    """``gmnn analyze (--ckpt_path CKPT | --hf_model DIR) [--data ...] [--split val] [--out DIR] [--max_batches N]``.

    The model is exactly one of ``--ckpt_path`` (a gmnn checkpoint; its data module is rebuilt from the run's
    ``config.yaml``, by default beside its ``checkpoints/`` folder) or ``--hf_model`` (a folder written by
    ``save_pretrained`` of any Hugging Face MoE family whose router returns its logits; the data defaults to
    ``gmnn.data.MixedSourceTextDataModule``, byte tokens labelled by source, for a model of at least 256 tokens).
    ``--data`` names another LightningDataModule (class path, YAML file or JSON), with its arguments as
    ``--data.init_args.NAME VALUE``; its batches' first entry is the model input, their last the per-token label.
    Prints the per-layer table and writes :func:`routing_report` of the chosen split with :func:`write_report`:
    ``routing_{split}.csv`` (layers), ``routing_{split}_experts.csv`` (experts: share, dead, top label,
    co-activated partner, top tokens), ``routing_{split}_labels.csv`` (per-label entropy) and one
    ``routing_{split}_{layer}.png`` per layer, into ``--out`` (default: ``<run>/routing`` or ``DIR/routing``).
    """
    parser = argparse.ArgumentParser(prog="gmnn analyze", usage=USAGE, description=main.__doc__)
    parser.add_argument("--ckpt_path", default=None, help="a gmnn checkpoint")
    parser.add_argument("--hf_model", default=None, help="a Hugging Face model folder written by save_pretrained")
    parser.add_argument("--config", default=None, help="with --ckpt_path: the run's config.yaml (default: beside checkpoints/)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/routing or <hf_model>/routing)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--max_batches", type=int, default=None, help="at most this many batches (>= 1; default: all)")
    parser.add_argument("--top_tokens", type=int, default=8, help="tokens listed per expert (0: none)")
    parsed, rest = parser.parse_known_args(args)
    stray = [arg for arg in rest if arg.startswith("-") and arg.split("=")[0].split(".")[0] != "--data"]
    if stray or (rest and not rest[0].startswith("--data")):
        stray = stray or rest
        raise ValueError(f"gmnn analyze: unknown argument {stray[0]} (usage: {USAGE})")
    if (parsed.ckpt_path is None) == (parsed.hf_model is None):
        raise ValueError("gmnn analyze needs exactly one model: --ckpt_path (a gmnn checkpoint) or --hf_model "
                         "(a folder written by save_pretrained)")
    if parsed.max_batches is not None:
        check_positive_int("--max_batches", parsed.max_batches)
    check_non_negative("--top_tokens", parsed.top_tokens)
    if parsed.hf_model is not None and parsed.config is not None:
        raise ValueError("--config belongs to --ckpt_path; with --hf_model give the data as --data")

    if parsed.ckpt_path is not None:
        model, config_data, out = _gmnn_model(parsed)
    else:
        model = load_model_folder(parsed.hf_model)
        config_data, out = {"class_path": DEFAULT_DATA}, Path(parsed.hf_model) / "routing"
    data = _build_data(rest, config_data)
    if data is None:
        raise ValueError("gmnn analyze: no data module: give one with --data")
    data.setup("fit" if parsed.split != "test" else "test")
    loader = {"train": data.train_dataloader, "val": data.val_dataloader, "test": data.test_dataloader}[parsed.split]()
    rows, matrices = routing_report(model, loader, num_labels=getattr(data, "num_labels", None),
                                    max_batches=parsed.max_batches)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or getattr(data, "num_classes", None)
    names = token_names(parsed.hf_model, vocab)
    out = Path(parsed.out) if parsed.out else out
    paths = write_report(rows, matrices, out, getattr(data, "label_names", None), split=parsed.split,
                         token_name=names, top_tokens=parsed.top_tokens)
    print(format_table(rows))
    for path in paths:
        print(path)


def _gmnn_model(parsed: argparse.Namespace) -> tuple[Any, Any, Path]:
    """The checkpoint's model, the ``data`` section of its run's config (``None`` if it has none) and ``<run>/routing``."""
    import yaml

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
    return model, (yaml.safe_load(config_path.read_text()) or {}).get("data"), ckpt.parent.parent / "routing"
