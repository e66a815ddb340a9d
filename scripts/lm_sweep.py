"""The token-level routing grid of RESULTS_LM.md: configs/lm/*.yaml x seeds, one process at a time, resumably.

    python scripts/lm_sweep.py --seeds 0 1 2 --out runs_lm --results-md RESULTS_LM.md
    python scripts/lm_sweep.py --methods --seeds 0 1 2 --out runs_lm   # the specialization methods + 2 baselines

Each run is ``gmnn fit --config C --seed_everything=S`` in its own process
(``OMP_NUM_THREADS=1``) under ``OUT/<config>/seed<S>/``; it is finished once its
``result.json`` exists (the final validation loss and, per MoE layer, the
RoutingMonitor's last ``val/routing/...`` values and training stability), so
a second invocation skips it. ``--table-only`` rebuilds the table and the plot
(``RESULTS_LM.png``: validation loss vs mean I(expert; source), colour = load imbalance).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the paper's methods at token level (docs/moe-layer.md) and the baselines they are compared with
METHODS = ("similarity", "attention", "attention_expert_hidden", "dual_temperature", "hard_em_warmup")
METHOD_BASELINES = ("top2_switch", "sigmoid_aux_free")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SERIES = ("mutual_information", "usage", "imbalance", "dead_experts", "label_entropy")


def run_one(config: Path, seed: int, out: Path, extra: list[str] | None = None) -> dict:
    """Fit one run in a fresh process (``extra``: further ``gmnn fit`` arguments); return its record
    (also written to ``result.json``)."""
    folder = out / config.stem / f"seed{seed}"
    command = [sys.executable, "-c", "from gmnn.cli import main; main()", "fit", "--config", str(config),
               f"--seed_everything={seed}", f"--trainer.logger.init_args.save_dir={out}",
               f"--trainer.logger.init_args.name={config.stem}", f"--trainer.logger.init_args.version=seed{seed}", *QUIET, *(extra or [])]
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "fit.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return write_record(folder, config.stem, seed, round(time.time() - start, 1))


def write_record(folder: Path, config: str, seed: int, wall_s: float) -> dict:
    """A finished run's ``result.json`` from its TensorBoard events (last values)."""
    from gmnn.cli.report import read_scalars

    scalars = read_scalars(folder)
    for tag in list(scalars):  # a value logged per step and epoch carries an "_epoch" suffix
        scalars.setdefault(tag.removesuffix("_epoch"), scalars[tag])
    record = {"config": config, "seed": seed, "wall_s": wall_s,
              "val_loss": scalars["val/loss"], "bits_per_byte": scalars["val/bits_per_byte"], "layers": {}}
    layers = sorted({tag.split("/")[2] for tag in scalars if tag.startswith("val/routing/")})
    for layer in layers:
        values = {name: scalars.get(f"val/routing/{layer}/{name}", math.nan) for name in SERIES}
        values["stability"] = scalars.get(f"train/routing/{layer}/stability", math.nan)
        record["layers"][layer] = values
    tmp = folder / "result.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(folder / "result.json")
    return record


LABELLINGS = {"source": 3, "byte_class": 5}  # the per-token labels the probes measure, and their number of values


def analyze_run(folder: Path, probe_batches: int = 16) -> dict:
    """The probes of a finished run (``analysis.json``): per MoE layer and labelling (source, byte class) of the
    validation tokens, I(router's top-1 expert; label) beside I(linear probe of the router input; label)
    (:mod:`gmnn.analysis.probe`, fitted on ``probe_batches`` training batches of the run's own data)."""
    import torch
    import yaml

    from gmnn.analysis.probe import probe_report
    from gmnn.data import MixedSourceTextDataModule
    from gmnn.data.text import byte_classes
    from gmnn.models import MoETransformerLM

    torch.set_num_threads(1)
    settings = yaml.safe_load((folder / "config.yaml").read_text())
    data = MixedSourceTextDataModule(**settings["data"]["init_args"])
    data.setup()
    model = MoETransformerLM.load_from_checkpoint(folder / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    labels = {"source": lambda batch: batch[2], "byte_class": lambda batch: byte_classes(batch[0])}
    result: dict[str, dict] = {}
    for labelling, count in LABELLINGS.items():
        for row in probe_report(model, data.train_dataloader(), data.val_dataloader(), count,
                                label_fn=labels[labelling], max_batches=probe_batches):
            result.setdefault(row.layer, {})[labelling] = {
                "router": row.router_information, "probe": row.probe_information,
                "probe_accuracy": row.accuracy, "label_entropy": row.label_entropy}
    tmp = folder / "analysis.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(folder / "analysis.json")
    return result


def probe_table(out: Path, configs: list[str]) -> str:
    """Markdown: per config, mean ± std over the analysed seeds of each layer's router and probe information,
    for the source and the byte class (see :func:`analyze_run`)."""
    rows = {config: [json.loads(p.read_text()) for p in sorted((out / config).glob("seed*/analysis.json"))]
            for config in configs}
    layers = sorted({layer for runs in rows.values() for run in runs for layer in run})
    head = ["setting", "seeds"]
    for labelling in LABELLINGS:
        head += [f"{labelling}: router / probe, {layer}" for layer in layers]
    entropies = {labelling: next((run[layer][labelling]["label_entropy"] for runs in rows.values() for run in runs
                                  for layer in run), math.nan) for labelling in LABELLINGS}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, runs in rows.items():
        if not runs:
            continue
        row = [config, str(len(runs))]
        for labelling in LABELLINGS:
            for layer in layers:
                values = [run[layer][labelling] for run in runs if layer in run]
                row.append(f"{_fmt([v['router'] for v in values], 2)} / {_fmt([v['probe'] for v in values], 2)}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("H(label) of the validation tokens: " + ", ".join(f"{k} {v:.3f} bits" for k, v in entropies.items()) + ".")
    return "\n".join(lines) + "\n"


def probe_plot(out: Path, configs: list[str], path: Path) -> None:
    """Per labelling (source, byte class) one panel: I(router's top-1; label) (y) against I(linear probe; label) (x),
    one point per analysed run and layer, a marker per config; the diagonal is a router as good as the probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LABELLINGS), figsize=(11, 4.4), dpi=100)
    markers = "osD^v<>p"
    for ax, labelling in zip(axes, LABELLINGS):
        top = 0.0
        for i, config in enumerate(configs):
            runs = [json.loads(p.read_text()) for p in sorted((out / config).glob("seed*/analysis.json"))]
            points = [(layer[labelling]["probe"], layer[labelling]["router"]) for run in runs for layer in run.values()]
            if points:
                ax.scatter(*zip(*points), marker=markers[i % len(markers)], s=45, edgecolors="black", label=config)
                top = max(top, *(max(point) for point in points))
        ax.plot([0, top * 1.05], [0, top * 1.05], color="grey", linewidth=1, linestyle="--")
        ax.set(xlabel=f"I(linear probe of the router input; {labelling}), bits",
               ylabel=f"I(top-1 expert; {labelling}), bits", title=f"label: {labelling}")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def ceiling(config: Path) -> tuple[float, float]:
    """``(H(source) of the validation tokens, log2 E)`` of a config."""
    import yaml

    from gmnn.data import MixedSourceTextDataModule

    settings = yaml.safe_load(config.read_text())
    data = MixedSourceTextDataModule(**settings["data"].get("init_args", {}))
    return data.label_entropy("val"), math.log2(settings["model"]["init_args"]["num_experts"])


def _fmt(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(records: list[dict], ceilings: dict[str, tuple[float, float]]) -> str:
    """Markdown: per config, mean ± sample std over seeds; MI per layer beside its ceiling min(log2 E, H(source))."""
    configs = sorted({r["config"] for r in records}, key=lambda c: [r["config"] for r in records].index(c))
    layers = sorted({layer for r in records for layer in r["layers"]})
    head = ["setting", "seeds", "val loss (nats/byte)", "val bits/byte"]
    head += [f"MI {layer} (bits)" for layer in layers]
    head += ["ceiling", "usage (bits, max log2 E)", "imbalance (max/mean)", "dead", "stability (last epoch)", "s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config in configs:
        runs = [r for r in records if r["config"] == config]
        entropy, log2e = ceilings[config]

        def per_layer(name: str) -> str:
            return " / ".join(_fmt([r["layers"][layer][name] for r in runs if layer in r["layers"]], 2) for layer in layers)

        row = [config, str(len(runs)), _fmt([r["val_loss"] for r in runs]), _fmt([r["bits_per_byte"] for r in runs])]
        row += [_fmt([r["layers"][layer]["mutual_information"] for r in runs if layer in r["layers"]]) for layer in layers]
        row += [f"{min(entropy, log2e):.3f}", per_layer("usage"), per_layer("imbalance"), per_layer("dead_experts"),
                per_layer("stability"), f"{statistics.mean(r['wall_s'] for r in runs):.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def trajectories(out: Path, configs: list[str]) -> str:
    """Markdown: per config and epoch, the mean over seeds and layers of the probe's changed fraction
    (stability) and of the validation I(expert; source): when the routing settles."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = {}
    for config in configs:
        per_epoch: dict[str, list[list[float]]] = {"stability": [], "mutual_information": []}
        finished = [p.parent for p in sorted((out / config).glob("seed*/result.json"))]
        for events in [e for folder in finished for e in sorted(folder.glob("events.out.tfevents.*"))]:
            accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0}).Reload()
            for name in per_epoch:
                stage = "train" if name == "stability" else "val"
                series = [[e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
                          if tag.startswith(f"{stage}/routing/") and tag.removesuffix("_epoch").endswith("/" + name)]
                per_epoch[name] += series
        rows[config] = {name: [statistics.mean(v) for v in zip(*series)] for name, series in per_epoch.items() if series}
    epochs = max((len(v) for r in rows.values() for v in r.values()), default=0)
    head = ["setting"] + [f"epoch {e + 1}: changed / MI" for e in range(epochs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, values in rows.items():
        cells = [f"{s:.2f} / {m:.2f}" for s, m in zip(values.get("stability", []), values.get("mutual_information", []))]
        lines.append("| " + " | ".join([config, *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    """Validation loss (x) vs mean I(expert; source) over layers (y), one point per run, colour = mean imbalance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    configs = list(dict.fromkeys(r["config"] for r in records))
    markers = "osD^v<>p"
    points = None
    top = max(1.3, max(statistics.mean(v["imbalance"] for v in r["layers"].values()) for r in records))
    for i, config in enumerate(configs):
        runs = [r for r in records if r["config"] == config]
        x = [r["val_loss"] for r in runs]
        y = [statistics.mean(v["mutual_information"] for v in r["layers"].values()) for r in runs]
        c = [statistics.mean(v["imbalance"] for v in r["layers"].values()) for r in runs]
        points = ax.scatter(x, y, c=c, cmap="viridis", vmin=1.0, vmax=top, marker=markers[i % len(markers)],
                            s=60, edgecolors="black", label=config)
    if points is not None:
        fig.colorbar(points, ax=ax, label="load imbalance (max/mean), mean over layers")
    ax.set(xlabel="validation loss (nats per byte)", ylabel="I(top-1 expert; source), bits, mean over layers",
           title="routing specialisation vs loss")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def measure_overhead(config: Path, steps: int = 40, rounds: int = 3) -> dict[str, float]:
    """Per-step training time with and without the RoutingMonitor, fits interleaved round by round (1 thread).

    The step time is the median gap between consecutive ``on_train_batch_start`` calls (so it
    includes the monitor's ``on_train_batch_end``), the fastest of the rounds. On a busy machine
    the A/B difference is noise; ``update_over_step`` times the monitor's own per-step work (its
    metric updates) directly. The epoch-end work (sync, compute, probe, figures) is timed
    separately and spread over the epoch's steps.
    """
    import statistics as stats

    import pytorch_lightning as L
    import torch
    import yaml
    from pytorch_lightning.loggers import TensorBoardLogger

    from gmnn.callbacks import RoutingMonitor
    from gmnn.data import MixedSourceTextDataModule
    from gmnn.models import MoETransformerLM

    torch.set_num_threads(1)
    settings = yaml.safe_load(config.read_text())
    data = MixedSourceTextDataModule(**settings["data"]["init_args"])
    data.setup()

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *args: object) -> None:
            self.starts.append(time.perf_counter())

    class TimedMonitor(RoutingMonitor):
        epoch_end_s = 0.0
        update_s: list[float] = []

        def _update(self, stage, batch) -> None:
            start = time.perf_counter()
            super()._update(stage, batch)
            self.update_s.append(time.perf_counter() - start)

        probe_s = 0.0

        def _finish(self, trainer, pl_module, stage) -> None:
            start = time.perf_counter()
            super()._finish(trainer, pl_module, stage)
            self.epoch_end_s += time.perf_counter() - start

        def _log_stability(self, trainer, pl_module) -> None:
            start = time.perf_counter()
            super()._log_stability(trainer, pl_module)
            self.probe_s += time.perf_counter() - start

    times: dict[str, list[float]] = {"without": [], "with": []}
    epoch_end, probe = [], []
    for round_ in range(rounds):
        for mode in ("without", "with"):
            L.seed_everything(round_, verbose=False)
            clock = Clock()
            callbacks: list[L.Callback] = [clock]
            if mode == "with":
                callbacks.append(TimedMonitor(stages=("train",)))
            trainer = L.Trainer(max_steps=steps, limit_val_batches=0, accelerator="cpu", enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False, callbacks=callbacks,
                                logger=TensorBoardLogger(f"/tmp/lm_overhead/{mode}"))
            trainer.fit(MoETransformerLM(**settings["model"]["init_args"], input_shape=data.input_shape), data)
            gaps = [b - a for a, b in zip(clock.starts[1:-1], clock.starts[2:])]  # skip the first (probe, warm-up)
            times[mode].append(stats.median(gaps))
            if mode == "with":
                epoch_end.append(callbacks[1].epoch_end_s + callbacks[1].probe_s)
                probe.append(callbacks[1].probe_s)
    import io

    from gmnn.analysis.plots import routing_figure

    figure_s = []
    for _ in range(3):  # one validation figure of one layer, rendered to PNG as TensorBoard's add_figure does
        start = time.perf_counter()
        matrices = {"joint": torch.rand(4, 3), "load": torch.rand(4), "coactivation": torch.rand(4, 4)}
        routing_figure(matrices, ["code", "prose", "data"], "layer", [0.5, 0.1]).savefig(io.BytesIO(), format="png")
        figure_s.append(time.perf_counter() - start)
    without, with_ = min(times["without"]), min(times["with"])
    steps_per_epoch = len(data.train_dataloader())
    update = stats.median(TimedMonitor.update_s)  # the monitor's own work per step, timed inside the step
    return {"step_s_without": without, "step_s_with": with_, "per_step_overhead": with_ / without - 1,
            "update_s": update, "update_over_step": update / without,
            "epoch_end_s": min(epoch_end), "probe_s": min(probe), "figure_s_per_layer": min(figure_s),
            "epoch_end_per_step": min(epoch_end) / steps_per_epoch / without,
            "rounds_without": times["without"], "rounds_with": times["with"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", type=Path, default=sorted((ROOT / "configs" / "lm").glob("*.yaml")))
    parser.add_argument("--methods", action="store_true",
                        help=f"run the specialization methods {METHODS} and the baselines {METHOD_BASELINES} "
                             "instead of --configs")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra gmnn fit arguments for every run, without the leading dashes, e.g. "
                             "trainer.max_epochs=2 model.init_args.d_model=32 (use another --out for another size)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs_lm")
    parser.add_argument("--results-md", type=Path, default=None, help="write the table here (Markdown)")
    parser.add_argument("--plot", type=Path, default=ROOT / "RESULTS_LM.png")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table and plot from finished runs")
    parser.add_argument("--overhead", action="store_true", help="measure the RoutingMonitor's cost per training step")
    parser.add_argument("--analyze", action="store_true",
                        help="probe every finished run without an analysis.json (router vs linear probe, source and "
                             "byte class) and add the probe table")
    parser.add_argument("--probe-plot", type=Path, default=None,
                        help="with --analyze: write the router-vs-probe figure here (PNG)")
    args = parser.parse_args(argv)
    if args.overhead:
        print(json.dumps(measure_overhead(args.configs[0] if len(args.configs) == 1 else ROOT / "configs/lm/top2_switch.yaml"), indent=1))
        return
    if args.methods:
        args.configs = [ROOT / "configs" / "lm" / f"{name}.yaml" for name in (*METHOD_BASELINES, *METHODS)]
    out = args.out.resolve()
    for seed in args.seeds:  # seed-major: every setting gets its first seed before any gets its third
        for config in args.configs:
            done = out / config.stem / f"seed{seed}" / "result.json"
            if args.table_only and done.exists():  # re-read the events (keeps the measured wall time)
                write_record(done.parent, config.stem, seed, json.loads(done.read_text())["wall_s"])
            if args.table_only or done.exists():
                continue
            try:
                record = run_one(config.resolve(), seed, out, [f"--{item.removeprefix('--')}" for item in args.set])
                print(f"{config.stem} seed {seed}: val loss {record['val_loss']:.3f} in {record['wall_s']:.0f} s", flush=True)
            except subprocess.CalledProcessError as error:
                print(f"{config.stem} seed {seed}: FAILED ({error}); see {out / config.stem / f'seed{seed}' / 'fit.log'}", flush=True)
    records = [json.loads(p.read_text()) for config in args.configs for p in sorted((out / config.stem).glob("seed*/result.json"))]
    if not records:
        return
    if args.analyze:
        for record in records:
            folder = out / record["config"] / f"seed{record['seed']}"
            if not (folder / "analysis.json").exists():
                analyze_run(folder)
    markdown = table(records, {c.stem: ceiling(c) for c in args.configs if any(r["config"] == c.stem for r in records)})
    markdown += "\n" + trajectories(out, list(dict.fromkeys(r["config"] for r in records)))
    if args.analyze:
        markdown += "\n" + probe_table(out, list(dict.fromkeys(r["config"] for r in records)))
        if args.probe_plot:
            probe_plot(out, list(dict.fromkeys(r["config"] for r in records)), args.probe_plot)
    print(markdown)
    plot(records, args.plot)
    if args.results_md:
        args.results_md.write_text(markdown)


if __name__ == "__main__":
    main()
