# %% [markdown]
# # A token-level MoE: `MoELayer` in a small transformer, its routing report, and a Hugging Face model
#
# `gmnn.nn.MoELayer` is a drop-in feed-forward layer for transformers: a router sends each token to k of E
# experts, and the layer returns `(output, aux_loss)`. The decomposition metrics of gmnn's image models
# apply per layer, with a per-token label (here: which "source" a token came from) in place of the class.
#
# **Sizes.** A 2-layer transformer with d_model 32 and 4 experts per layer, trained for 150 steps on
# synthetic token sequences from two sources, and a Mixtral model built from a tiny random config (no
# download): seconds on a CPU.
#
# ## The model

# %%
import torch
from torch import nn

from gmnn.nn import MoELayer

torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self, d_model: int = 32, heads: int = 4, num_experts: int = 4) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ffn = MoELayer(d_model, hidden=4 * d_model, num_experts=num_experts, k=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        x = x + self.attention(h, h, h, attn_mask=causal, need_weights=False)[0]
        out, aux_loss = self.ffn(self.norm2(x))
        return x + out, aux_loss


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 32, d_model: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(Block(d_model) for _ in range(layers))
        self.out = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, aux = self.embed(tokens), 0.0
        for block in self.blocks:
            x, block_aux = block(x)
            aux = aux + block_aux
        return self.out(x), aux


# %% [markdown]
# ## Data with a known label per token
#
# Each sequence splices runs of two sources: source 0 counts upwards through tokens 0–15, source 1 draws
# random tokens from 16–31. Every token carries its source, so we can ask whether the experts specialise by
# source, as `gmnn.data.MixedSourceTextDataModule` does with code, prose and data bytes.

# %%
def batch(size: int = 32, length: int = 32, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    source = (torch.rand(size, length // 8, generator=generator) < 0.5).long().repeat_interleave(8, dim=1)
    counting = (torch.arange(length) + torch.randint(0, 16, (size, 1), generator=generator)) % 16
    random = 16 + torch.randint(0, 16, (size, length), generator=generator)
    return torch.where(source == 0, counting, random), source


model = TinyLM()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for step in range(150):
    tokens, _ = batch()
    logits, aux_loss = model(tokens[:, :-1])
    loss = nn.functional.cross_entropy(logits.reshape(-1, 32), tokens[:, 1:].reshape(-1)) + aux_loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0 or step == 149:
        print(f"step {step:3d}: loss {loss.item():.3f}")

# %% [markdown]
# ## The routing report
#
# `gmnn.analysis.routing_report` runs the model over a data loader and measures every MoE layer it finds
# (gmnn's `MoELayer`s, Hugging Face MoE blocks, gmnn's image gates), reading the routing the layer recorded
# (`layer.last_routing`) instead of running the router again. `label_fn` gives the per-token label.

# %%
from IPython.display import Markdown, display

from gmnn.analysis import routing_figure, routing_report

generator = torch.Generator().manual_seed(1)
loader = [batch(generator=generator) for _ in range(8)]
rows, matrices = routing_report(model.eval(), loader, label_fn=lambda b: b[1])
columns = ["layer", "usage", "imbalance", "dead_experts", "mutual_information", "mi_ceiling", "label_entropy"]
table = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
for row in rows:
    table.append("| " + " | ".join(f"{getattr(row, c):.3f}" if isinstance(getattr(row, c), float) else str(getattr(row, c))
                                   for c in columns) + " |")
display(Markdown("\n".join(table)))

# %% [markdown]
# After 150 steps the load is balanced (usage near 2 bits, no dead expert) but the experts carry little
# information about the source (a small fraction of the 1-bit ceiling), as in the larger runs of
# [the token-level routing results](../results-lm.md): routing follows the tokens more than their source.
#
# *usage*: entropy in bits of the experts' shares of the routed pairs (log2 4 = 2 when balanced);
# *imbalance*: largest share over mean share; *mutual_information*: I(top-1 expert; source) in bits, whose
# ceiling is min(log2 E, H(source)) = 1 bit here; *label_entropy*: how spread each source is over the
# experts (0: each source owns its experts). The figure of one layer: the expert × source heatmap, the usage
# bars and the co-activation matrix (the fraction of expert e's tokens that expert f also gets):

# %%
import io

from IPython.display import Image

figure = routing_figure(matrices["blocks.0.ffn"], label_names=["counting", "random"], title="blocks.0.ffn")
png = io.BytesIO()
figure.savefig(png, format="png", dpi=80)
display(Image(png.getvalue()))

# %% [markdown]
# During training, `gmnn.callbacks.RoutingMonitor` logs the same statistics per epoch, and `gmnn analyze
# --ckpt_path ...` writes this report for a trained checkpoint ([Routing analysis](../routing-analysis.md)).
#
# ## A Hugging Face MoE model
#
# The same report works on a Hugging Face MoE model. We build a tiny Mixtral from a config (random weights,
# nothing downloaded) and label each token by whether its id is below half the vocabulary:

# %%
import warnings

from transformers import MixtralConfig, MixtralForCausalLM

warnings.filterwarnings("ignore")
config = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64)
torch.manual_seed(0)
hf_model = MixtralForCausalLM(config).eval()
ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(2))
hf_rows, _ = routing_report(hf_model, [(ids, (ids >= 32).long())], label_fn=lambda b: b[1])
for row in hf_rows:
    print(f"{row.layer}: {row.num_experts} experts, usage {row.usage:.2f} bits, imbalance {row.imbalance:.2f}, "
          f"I(expert; id half) {row.mutual_information:.3f} bits")

# %% [markdown]
# A Hugging Face block can also become a gmnn `MoELayer` that computes exactly the same function
# (`gmnn.nn.from_hf`; the families it converts and refuses are listed on
# [Hugging Face MoE families](../hf_families.md)), to study or retrain it with gmnn's routers and metrics;
# `gmnn.nn.to_hf` writes the weights back:

# %%
from gmnn.nn import from_hf

block = hf_model.model.layers[0].mlp
layer = from_hf(block)
x = torch.randn(2, 5, 32)
with torch.no_grad():
    reference = block(x)
    reference = reference[0] if isinstance(reference, tuple) else reference
    output, _ = layer(x)
print(type(block).__name__, "->", type(layer).__name__, f"with {type(layer.router).__name__}")
print(f"largest difference from the Hugging Face block: {(output - reference).abs().max().item():.1e}")
