"""Make the figures of the docs site (docs/images/*.png) from real runs of the toy configs.

Each run is the shipped config as it is (``gmnn fit --config configs/toy/<name>.yaml``), written to
``runs/docs/<name>``; the figures are read back from its TensorBoard events (the images the
``figures`` callback logged after the last validation epoch, and the gate-probability histograms,
redrawn with matplotlib) and saved, downscaled, as small PNGs:

    python scripts/docs_figures.py                 # every run (a few minutes on 2 CPU cores)
    python scripts/docs_figures.py --only dense    # one run
    python scripts/docs_figures.py --extract-only  # redraw from the runs already in runs/docs
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "docs"
IMAGES = ROOT / "docs" / "images"
CONFIGS = {
    "dense": "configs/toy/dense.yaml",
    "topk": "configs/toy/topk.yaml",
    "product": "configs/toy/product.yaml",
    "attention": "configs/toy/attention.yaml",
}


def train(name: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = ["gmnn", "fit", "--config", CONFIGS[name], f"--trainer.logger.init_args.save_dir={RUNS}",
           f"--trainer.logger.init_args.name={name}", "--trainer.enable_progress_bar=false"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def newest_run(name: str) -> Path:
    versions = sorted((RUNS / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise SystemExit(f"no run under {RUNS / name}: run without --extract-only first")
    return versions[-1]


def save_png(data: bytes, path: Path, width: int) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image = image.quantize(colors=96, method=Image.Quantize.MEDIANCUT)  # small files: the figures are flat colours
    image.save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} kB)")


def extract(name: str) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = newest_run(name)
    events = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag, stem, width in (("val/decision_regions", "regions", 760), ("val/decomposition", "decomposition", 700)):
        if tag in tags["images"]:
            save_png(events.Images(tag)[-1].encoded_image_string, IMAGES / f"{name}_{stem}.png", width)
    if name == "dense":
        histograms = sorted(t for t in tags["histograms"] if t.startswith("val/gate_probs/"))
        if histograms:
            draw_histograms(events, histograms, IMAGES / "dense_gate_probs.png")
        draw_curves(events, IMAGES / "dense_curves.png")


def draw_histograms(events, tags: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tags), figsize=(2.2 * len(tags), 2.0), sharey=True)
    for ax, tag in zip(axes, tags):
        histogram = events.Histograms(tag)[-1].histogram_value
        edges = [histogram.min, *histogram.bucket_limit[:-1]]
        widths = [b - a for a, b in zip(edges, histogram.bucket_limit)]
        ax.bar(edges, histogram.bucket, width=widths, align="edge", color="tab:blue")
        ax.set_title(tag.split("/")[-1], fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("gate probability", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("samples", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")


def draw_curves(events, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = events.Tags()["scalars"]
    panels = [("val/acc", "accuracy"), ("val/mutual_information", "I(E;Y), bits"),
              ("val/expert_usage", "expert usage, bits"), ("val/sample_entropy", "sample entropy, bits")]
    panels = [(tag, label) for tag, label in panels if tag in scalars]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.1))
    for ax, (tag, label) in zip(axes, panels):
        values = events.Scalars(tag)
        ax.plot(range(1, len(values) + 1), [v.value for v in values], marker="o", markersize=3)
        ax.set_title(tag, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False)
        if tag != "val/acc":
            ax.set_ylim(-0.05, 2.1)  # bits, up to log2(4) = 2 experts' worth
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="these runs only")
    parser.add_argument("--extract-only", action="store_true", help="redraw from the runs in runs/docs")
    args = parser.parse_args(argv)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in args.only or CONFIGS:
        if not args.extract_only:
            train(name)
        extract(name)


if __name__ == "__main__":
    sys.exit(main())
