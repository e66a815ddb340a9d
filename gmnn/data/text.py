"""A byte-level token benchmark with known tasks: text from sources of different statistics.

Every Python installation ships the same raw material, so the benchmark needs
no download: Python source files of the standard library (docstrings removed),
English prose from their docstrings (``ast.get_docstring``), and structured
data (arithmetic, JSON and CSV records) generated from the seed. Sequences are
spliced from segments of randomly chosen sources and every byte is labelled by
the source it came from, so the routing of a token-level MoE can be compared
with a known decomposition (cf. the domain analyses of Jiang et al., 2024,
"Mixtral of Experts", section 5).
"""

from __future__ import annotations

import ast
import functools
import json
import math
import random
import string
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from gmnn.data.splits import SplitDataModule
from gmnn.validation import check_choice, check_non_negative, check_positive_int

SOURCES = ("code", "prose", "data")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # each source's text is cut into disjoint train / val / test regions
VOCAB_SIZE = 256  # bytes
LABELS = ("source", "byte_class")
BYTE_CLASSES = ("letter", "digit", "punctuation", "whitespace", "other")
"""The classes of :func:`byte_classes`, in the order of their indices (the ``byte_class`` labels' names)."""


def _byte_class_table() -> Tensor:
    table = torch.full((VOCAB_SIZE,), BYTE_CLASSES.index("other"), dtype=torch.long)
    for name, characters in [("letter", string.ascii_letters), ("digit", string.digits),
                             ("punctuation", string.punctuation), ("whitespace", string.whitespace)]:
        table[list(characters.encode("ascii"))] = BYTE_CLASSES.index(name)
    return table


BYTE_CLASS_OF = _byte_class_table()


def byte_classes(tokens: Tensor) -> Tensor:
    """The class of every byte of ``tokens`` (any shape, values in [0, 256)), as indices into :data:`BYTE_CLASSES`.

    ASCII letters, digits, punctuation (``string.punctuation``) and whitespace
    (``string.whitespace``); every other byte (control and non-ASCII) is ``other``.
    """
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor of bytes, got dtype {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= VOCAB_SIZE):
        raise ValueError(f"tokens must be bytes in [0, {VOCAB_SIZE}), got values in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    return BYTE_CLASS_OF.to(tokens.device)[tokens.long()]


def stdlib_files(seed: int) -> list[Path]:
    """The top-level ``.py`` files of the running Python's standard library, shuffled by ``seed``."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    random.Random(seed).shuffle(files)
    return files


def _docstring_nodes(tree: ast.Module) -> list[ast.AST]:
    """The module, its top-level classes and functions, and the classes' methods (not nested functions)."""
    kinds = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    top = [node for node in tree.body if isinstance(node, kinds)]
    methods = [node for cls in top if isinstance(cls, ast.ClassDef) for node in cls.body if isinstance(node, kinds)]
    return [tree, *top, *methods]


def split_source(text: str) -> tuple[str, list[str]]:
    """``text`` (Python source) without its docstrings, and the docstrings (cleaned by ``ast.get_docstring``)."""
    tree = ast.parse(text)
    drop: set[int] = set()
    docstrings = []
    for node in _docstring_nodes(tree):
        doc = ast.get_docstring(node, clean=True)
        if doc is None:
            continue
        docstrings.append(doc)
        first = node.body[0]
        drop.update(range(first.lineno - 1, (first.end_lineno or first.lineno)))
    lines = text.splitlines(keepends=True)
    return "".join(line for i, line in enumerate(lines) if i not in drop), docstrings


@functools.lru_cache(maxsize=4)
def python_corpora(budget: int, seed: int) -> tuple[bytes, bytes]:
    """``budget`` bytes each of standard-library code (without docstrings) and of docstring prose.

    Kept per process for the last few ``(budget, seed)``: parsing the files is most of a data module's setup,
    and a process that sets up several (fit then test, a sweep, the tests) reads the same files each time.
    """
    code, prose = bytearray(), bytearray()
    for path in stdlib_files(seed):
        if len(code) >= budget and len(prose) >= budget:
            break
        try:
            source, docstrings = split_source(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if len(code) < budget:
            code += source.encode() + b"\n"
        if len(prose) < budget:
            prose += "".join(doc + "\n\n" for doc in docstrings if len(doc) >= 40).encode()
    return bytes(code[:budget]), bytes(prose[:budget])


def data_corpus(budget: int, seed: int) -> bytes:
    """``budget`` bytes of generated structured data: arithmetic lines, JSON records and CSV rows."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "id", "key", "value", "count", "x", "y", "price", "name"]
    out, size = [], 0
    while size < budget:
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randrange(1000), rng.randrange(1000)
            op = rng.choice("+-*")
            line = f"{a}{op}{b}={a + b if op == '+' else a - b if op == '-' else a * b}\n"
        elif kind == 1:
            record = {rng.choice(words): rng.randrange(10**rng.randrange(1, 6)) for _ in range(rng.randrange(1, 4))}
            record["score"] = round(rng.random(), 3)
            line = json.dumps(record) + "\n"
        else:
            line = ",".join(str(rng.randrange(100)) if rng.random() < 0.7 else f"{rng.random():.2f}"
                            for _ in range(rng.randrange(3, 7))) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:budget]


def build_corpora(sources: Sequence[str], budget: int, seed: int) -> dict[str, bytes]:
    """The text of each source (``code``, ``prose``, ``data``), ``budget`` bytes each, deterministic from ``seed``."""
    corpora: dict[str, bytes] = {}
    if "code" in sources or "prose" in sources:
        corpora["code"], corpora["prose"] = python_corpora(budget, seed)
    if "data" in sources:
        corpora["data"] = data_corpus(budget, seed)
    return {name: corpora[name] for name in sources}


def splice(regions: Sequence[Tensor], count: int, length: int, min_segment: int, max_segment: int,
           generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` byte sequences ``[count, length]`` spliced from random segments, and the source of every byte.

    Each sequence is a run of segments; segment ``s`` has a uniform length in
    ``[min_segment, max_segment]``, a uniformly chosen source ``i`` and a uniform
    start in ``regions[i]`` (vectorised: no loop over sequences or bytes).
    """
    per_sequence = math.ceil(length / min_segment)
    sizes = torch.tensor([len(region) for region in regions])
    bases = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
    flat = torch.cat(list(regions))
    lengths = torch.randint(min_segment, max_segment + 1, (count, per_sequence), generator=generator)
    source = torch.randint(0, len(regions), (count, per_sequence), generator=generator)
    starts = (torch.rand(count, per_sequence, generator=generator) * (sizes[source] - max_segment)).long()
    ends = lengths.cumsum(1)
    position = torch.arange(length).expand(count, length)
    segment = torch.searchsorted(ends, position.contiguous(), right=True)  # [count, length]
    offset = position - (ends - lengths).gather(1, segment)
    seg_source = source.gather(1, segment)
    index = bases[seg_source] + starts.gather(1, segment) + offset
    return flat[index], seg_source


class MixedSourceTextDataModule(SplitDataModule):
    """Byte sequences spliced from Python code, English prose and structured data, each byte labelled by source.

    Batches are ``(tokens [B, L], targets [B, L], labels [B, L])``: ``targets``
    are the next bytes (language modelling); ``labels`` (the per-token label of
    :class:`gmnn.callbacks.RoutingMonitor`) are, with ``label="source"``, the index
    into ``sources`` of the text each input byte came from, or with
    ``label="byte_class"`` the input byte's class (:data:`BYTE_CLASSES`: letter,
    digit, punctuation, whitespace, other): a decomposition by token syntax
    rather than by domain, on the same bytes. Train, validation and test
    sequences are cut from disjoint regions (80/10/10%) of every source's text.
    Everything is deterministic from ``seed``; nothing is downloaded. Linked
    into the model: ``input_shape = [seq_len]`` and ``num_classes = 256``
    (bytes); ``num_labels`` and ``label_names`` describe the labels.

    Args:
        sources: Which sources to mix, from ``code`` (standard-library ``.py`` files
            without docstrings), ``prose`` (their docstrings) and ``data`` (generated
            arithmetic / JSON / CSV lines).
        seq_len: Tokens per sequence L.
        num_train: Training sequences.
        num_val: Validation sequences (also the number of test sequences).
        min_segment: Shortest run of bytes from one source.
        max_segment: Longest run of bytes from one source.
        source_bytes: Bytes of text taken from each source.
        batch_size: Sequences per batch.
        seed: Seed of the text selection and of the splicing.
        num_workers: DataLoader worker processes.
        label: The per-token label of the batches: ``source`` or ``byte_class``.
    """

    def __init__(
        self,
        sources: Sequence[str] = SOURCES,
        seq_len: int = 128,
        num_train: int = 4096,
        num_val: int = 512,
        min_segment: int = 32,
        max_segment: int = 96,
        source_bytes: int = 300_000,
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
        label: str = "source",
    ) -> None:
        super().__init__()
        check_choice("label", label, LABELS)
        sources = tuple(sources)
        if not sources or len(set(sources)) != len(sources):
            raise ValueError(f"sources must be distinct names from {SOURCES}, got {list(sources)}")
        for name in sources:
            check_choice("sources", name, SOURCES)
        for name, value in [("seq_len", seq_len), ("num_train", num_train), ("num_val", num_val),
                            ("min_segment", min_segment), ("max_segment", max_segment),
                            ("source_bytes", source_bytes), ("batch_size", batch_size)]:
            check_positive_int(name, value)
        check_non_negative("num_workers", num_workers)
        if max_segment < min_segment:
            raise ValueError(f"max_segment must be >= min_segment={min_segment}, got {max_segment}")
        if source_bytes * min(SPLIT_FRACTIONS) <= max_segment:
            raise ValueError(
                f"source_bytes must leave each split more than max_segment={max_segment} bytes "
                f"(>= {math.floor(max_segment / min(SPLIT_FRACTIONS)) + 1}), got {source_bytes}"
            )
        self.save_hyperparameters()
        self.input_shape = [seq_len]
        self.num_classes = VOCAB_SIZE
        self.label_names = list(sources) if label == "source" else list(BYTE_CLASSES)
        self.num_labels = len(self.label_names)
        self.corpora: dict[str, bytes] = {}
        self.splits: dict[str, TensorDataset] = {}

    def regions(self, split: str) -> list[bytes]:
        """The part of every source's text that ``split`` draws from (disjoint across splits)."""
        result = []
        for text in self.corpora.values():
            cuts = [0, *(round(len(text) * f) for f in torch.tensor(SPLIT_FRACTIONS).cumsum(0).tolist())]
            index = SPLITS.index(split)
            result.append(text[cuts[index]:cuts[index + 1]])
        return result

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        self.corpora = build_corpora(hp.sources, hp.source_bytes, hp.seed)
        for name, text in self.corpora.items():
            if len(text) * min(SPLIT_FRACTIONS) <= hp.max_segment:
                raise ValueError(f"source {name!r} has only {len(text)} bytes; lower max_segment or source_bytes")
        for i, split in enumerate(SPLITS):
            regions = [torch.frombuffer(bytearray(r), dtype=torch.uint8).long() for r in self.regions(split)]
            count = hp.num_train if split == "train" else hp.num_val
            generator = torch.Generator().manual_seed(hp.seed * len(SPLITS) + i)
            data, source = splice(regions, count, hp.seq_len + 1, hp.min_segment, hp.max_segment, generator)
            tokens = data[:, :-1].contiguous()
            labels = source[:, :-1].contiguous() if hp.label == "source" else byte_classes(tokens)
            self.splits[split] = TensorDataset(tokens, data[:, 1:].contiguous(), labels)

    def label_entropy(self, split: str = "val") -> float:
        """Entropy in bits of the labels of ``split``'s tokens: with log2(E), the ceiling of I(expert; label)."""
        self.setup()
        counts = torch.bincount(self.splits[split].tensors[2].flatten(), minlength=self.num_labels).double()
        p = counts / counts.sum()
        return float(-(torch.special.xlogy(p, p)).sum() / math.log(2))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        sampler = None if shuffle else self.eval_sampler(self.splits[split])  # DDP: each sequence once
        return DataLoader(
            self.splits[split], batch_size=self.hparams.batch_size, shuffle=shuffle, sampler=sampler,
            num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0,
        )
