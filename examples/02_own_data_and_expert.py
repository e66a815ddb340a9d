# %% [markdown]
# # Your own dataset and expert network
#
# gmnn's models take any data module that serves `(inputs, labels)` batches and any `torch.nn.Module` as an
# expert or a gate. This example uses a small project of its own, `examples/my_project.py`:
#
# - `RingsData`, a `LightningDataModule`: points on three concentric rings, each ring cut in two by the
#   sign of y (6 classes). It sets `input_shape` and `num_classes`, which gmnn links into the model.
# - `RadialExpert`, an `nn.Module` that returns class logits from the input and its polar coordinates.
#
# **Sizes.** 3,000 points, 4 epochs, 3 experts: a few seconds on a CPU.
#
# ## Through the CLI, by class path
#
# The folder holding `my_project.py` must be importable (`PYTHONPATH=examples`). gmnn passes `in_features`
# and `out_features` to the expert's `__init__`; `init_args` sets the rest.

# %%
import os
import subprocess

command = [
    "gmnn", "fit", "--model", "gmnn.models.DenseMoE", "--data", "my_project.RingsData",
    "--model.init_args.num_experts=3",
    "--model.init_args.expert={class_path: my_project.RadialExpert, init_args: {width: 32}}",
    "--model.init_args.regularizers={importance: 0.1}", "--model.init_args.lr=0.01",
    "--trainer.max_epochs=4", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--trainer.logger.init_args.save_dir=runs/examples", "--trainer.logger.init_args.name=own_data",
]
print(" ".join(command))
done = subprocess.run(command, capture_output=True, text=True, check=True,
                      env={**os.environ, "PYTHONPATH": "examples"})
print(done.stderr[done.stderr.index("gmnn: fit finished"):])

# %% [markdown]
# The same in a YAML file, which is how you would keep it:
#
# ```yaml
# model:
#   class_path: gmnn.models.DenseMoE
#   init_args:
#     num_experts: 3
#     expert: {class_path: my_project.RadialExpert, init_args: {width: 32}}
#     regularizers: {importance: 0.1}
#     lr: 0.01
# data:
#   class_path: my_project.RingsData
# ```
#
# The checkpoint records the expert's class path and arguments, so `MoEModule.load_from_checkpoint` rebuilds
# the same networks wherever `my_project` is importable.
#
# ## From Python
#
# The same model, built and trained with a plain Lightning `Trainer`. The expert is given as a class path
# dictionary, exactly as in YAML.

# %%
import sys

sys.path.insert(0, "examples")

import logging

import pytorch_lightning as pl

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # no banner lines in the page
import torch

from gmnn.models import DenseMoE, MoEModule
from my_project import RingsData

data = RingsData()
model = DenseMoE(input_shape=data.input_shape, num_classes=data.num_classes, num_experts=3,
                 expert={"class_path": "my_project.RadialExpert", "init_args": {"width": 32}},
                 regularizers={"importance": 0.1}, lr=0.01)
trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[])
trainer.fit(model, datamodule=data)
print({name: round(float(value), 3) for name, value in trainer.callback_metrics.items() if name.startswith("val/")})

# %% [markdown]
# The decomposition metrics are logged for your data as for gmnn's own. Which expert does the gate give each
# ring? The mean gate probability per class:

# %%
from IPython.display import Markdown, display

model.eval()
x, y = data.val_set.tensors
with torch.no_grad():
    out = model(x)
rows = ["| class (ring, half) | " + " | ".join(f"expert {e}" for e in range(3)) + " |", "|---" * 4 + "|"]
for c in range(data.num_classes):
    mean = out.gate_probs[y == c].mean(0)
    rows.append(f"| {c} ({c // 2}, {'upper' if c % 2 else 'lower'}) | " + " | ".join(f"{p:.2f}" for p in mean) + " |")
display(Markdown("\n".join(rows)))
print(f"accuracy: {(out.log_probs.argmax(1) == y).float().mean():.3f}")

# %% [markdown]
# A crisp decomposition shows one large entry per row. With only 4 epochs the split may still be partial;
# the full-size recipe (more epochs, `regularizers` with `similarity_same` / `similarity_different`, see
# [Training methods](../training-methods.md)) makes it sharper. More on your own networks, including a gate
# and `hidden_from` for the attention gate: [Your own data, expert, gate and model](../your-own.md).
