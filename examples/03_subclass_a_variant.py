# %% [markdown]
# # Subclassing a variant to change one hook
#
# Every variant is a `LightningModule` built from a few documented hooks: `build_expert` and `build_gate`
# make the networks, `sample_distances` gives the distances of the sample-similarity regularizer, and so on
# (see `MoEModule` in the [API reference](../api/models.md)). To change one part, subclass a variant and
# override that hook; everything else (routing, losses, metrics, figures, checkpoints, the CLI) stays.
#
# Here we replace the experts of `DenseMoE` with a tanh network of our own, and compare it with the
# default MLP experts on the 2x2 checkerboard. **Sizes**: 2,000 points, 3 epochs, 4 experts: seconds.

# %%
import logging

import pytorch_lightning as pl

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # no banner lines in the page
import torch
from torch import Tensor, nn

from gmnn.data import ToyDataModule
from gmnn.models import DenseMoE


class TanhExpert(nn.Module):
    """An expert returns its logits and its last hidden layer (the attention gate reads it)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.body(x)
        return self.head(hidden), hidden


class TanhMoE(DenseMoE):
    def build_expert(self) -> nn.Module:  # the one hook we change
        return TanhExpert(self.num_classes)


# %% [markdown]
# The subclass takes every argument of `DenseMoE`. Train both on the same data and seed:

# %%
def train(model_class: type[DenseMoE]) -> dict[str, float]:
    pl.seed_everything(0, verbose=False)
    data = ToyDataModule("checkerboard", num_samples=2000, batch_size=64)
    model = model_class(input_shape=[2], num_classes=2, num_experts=4, lr=0.01)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[])
    trainer.fit(model, datamodule=data)
    metrics = {k: round(float(v), 3) for k, v in trainer.callback_metrics.items()
               if k in ("val/acc", "val/mutual_information", "val/expert_usage", "val/sample_entropy")}
    return {"experts": type(model.experts[0].network if hasattr(model.experts[0], "network") else model.experts[0]).__name__,
            **metrics}


results = {name: train(cls) for name, cls in (("DenseMoE", DenseMoE), ("TanhMoE", TanhMoE))}

from IPython.display import Markdown, display

keys = ["val/acc", "val/mutual_information", "val/expert_usage", "val/sample_entropy"]
table = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
table += [f"| {name} | " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for name, r in results.items()]
display(Markdown("\n".join(table)))

# %% [markdown]
# To use the subclass from YAML or the command line, put it in an importable module and name it by class
# path (`--model mypackage.TanhMoE`); its checkpoints load with `MoEModule.load_from_checkpoint`, which
# rebuilds whichever class wrote them. Changing a network needs no subclass at all when the network is an
# importable `nn.Module`: pass it by class path (`expert: {class_path: ...}`, see the
# [previous example](02_own_data_and_expert.md)). Subclass when the change is not a network: for example
# `sample_distances(x)` to measure sample similarity on features of a frozen network instead of raw inputs.
