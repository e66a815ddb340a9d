# %% [markdown]
# # First run and what the figures show
#
# The first run of gmnn trains a dense mixture of 4 small MLP experts on `split_discs`: four discs in the
# plane with two classes each (each disc cut in half by a line through its centre), 8 classes in all. A gate
# that hands each disc to its own expert lets every expert learn a single straight line.
#
# **Sizes.** The shipped config (`configs/toy/dense.yaml`) trains 10 epochs on 16,000 samples, about a
# minute on 2 CPU cores. Here we train 5 epochs on 4,000 samples (a few seconds), which is enough for the
# split to show; the numbers of the full run are on [Getting started](../getting-started.md).
#
# The run goes through the `gmnn` command, exactly as you would type it (here from Python, so that this
# page can show its output). The repository root is the working folder.

# %%
import subprocess

command = [
    "gmnn", "fit", "--config", "configs/toy/dense.yaml",
    "--trainer.max_epochs=5", "--data.init_args.num_samples=4000",          # small: a few seconds
    "--trainer.logger.init_args.save_dir=runs/examples", "--trainer.logger.init_args.name=first_run",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]
done = subprocess.run(command, capture_output=True, text=True, check=True)
summary = done.stderr[done.stderr.index("gmnn: fit finished"):]
print(summary)

# %% [markdown]
# `fit` ends with a summary: the run folder, the checkpoints and the final validation metrics. The mutual
# information between the gate's chosen expert and the class is near its ceiling log2 4 = 2 bits: each
# expert owns two classes. Expert usage near 2 bits means all four experts get work; the sample entropy
# (how unsure the gate is, in bits) falls as training goes on.
#
# ## The figures
#
# The `figures` callback writes images into the run's TensorBoard events (`tensorboard --logdir
# runs/examples` shows them). Here we read the last ones back.

# %%
import io
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = Path(summary.split("run folder:")[1].split()[0])
events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
events.Reload()


def show(tag: str, width: float) -> None:
    image = Image.open(io.BytesIO(events.Images(tag)[-1].encoded_image_string))
    fig, ax = plt.subplots(figsize=(width, width * image.height / image.width))
    ax.imshow(image)
    ax.axis("off")
    fig.tight_layout(pad=0)
    plt.show()


show("val/decision_regions", 10)

# %% [markdown]
# **`val/decision_regions`** (2-D data only). The first panel colours the plane by the expert the gate
# picks: four blocks, one per disc, with their borders in the gaps between the discs. Then each expert's
# predicted class over the whole plane: an expert draws its own disc's line and is wrong elsewhere, which
# does not matter, since the gate never sends it those points. The last panel is the whole model: the 8
# half-discs.

# %%
show("val/decomposition", 8)

# %% [markdown]
# **`val/decomposition`**. Left: one row per expert, one column per class, the colour the expert's mean gate
# probability on that class's samples (each column sums to 1); the expert's accuracy on the samples routed
# to it is in brackets. A good decomposition is a permuted block-diagonal: each column has one bright cell,
# here each expert takes two adjacent classes. Right: each expert's mean gate probability and the fraction
# of samples routed to it; an expert with no bars would be dead.
#
# ## The metrics per epoch

# %%
from IPython.display import Markdown, display

tags = ["val/acc", "val/mutual_information", "val/expert_usage", "val/sample_entropy"]
rows = ["| epoch | " + " | ".join(tags) + " |", "|---" * (len(tags) + 1) + "|"]
for epoch, values in enumerate(zip(*(events.Scalars(tag) for tag in tags)), start=1):
    rows.append(f"| {epoch} | " + " | ".join(f"{v.value:.3f}" for v in values) + " |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# The split is decided early: mutual information is close to 2 bits after the first epoch, and the later
# epochs make the gate surer (lower sample entropy) and the experts more accurate. Without the
# sample-similarity regularizer of this config (`--model.init_args.regularizers=null`), two experts often
# die and the mutual information drops to about 1 bit. [Reading the results](../reading-results.md)
# explains every logged value and figure, and `gmnn report runs/examples` turns finished runs into a table.
