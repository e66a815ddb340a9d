"""MixedSourceTextDataModule: every byte's label is the source it came from; deterministic; disjoint splits."""

from __future__ import annotations

import ast

import pytest
import torch

from gmnn.data import MixedSourceTextDataModule
from gmnn.data.text import SOURCES, data_corpus, split_source, stdlib_files

SMALL = dict(seq_len=48, num_train=24, num_val=8, min_segment=8, max_segment=20, source_bytes=4000, batch_size=8)


@pytest.fixture(scope="module")
def data() -> MixedSourceTextDataModule:
    module = MixedSourceTextDataModule(**SMALL)
    module.setup("fit")
    return module


def _runs(labels: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(start, end, label)`` of every run of equal labels."""
    change = [0, *((labels[1:] != labels[:-1]).nonzero().flatten() + 1).tolist(), len(labels)]
    return [(a, b, int(labels[a])) for a, b in zip(change[:-1], change[1:])]


def _pieces(run: bytes, text: bytes) -> int:
    """The fewest substrings of ``text`` that ``run`` splits into (greedy longest prefix is optimal)."""
    count, start = 0, 0
    while start < len(run):
        length = 1
        while start + length < len(run) and run[start:start + length + 1] in text:
            length += 1
        assert run[start:start + length] in text, f"byte {run[start:start + 1]!r} is not in the labelled source"
        count, start = count + 1, start + length
    return count


def test_labels_are_the_source_of_the_bytes(data: MixedSourceTextDataModule) -> None:
    for split in ("train", "val", "test"):
        regions = data.regions(split)
        tokens, targets, source = data.splits[split].tensors
        assert tokens.shape == targets.shape == source.shape == (len(tokens), SMALL["seq_len"])
        assert torch.equal(tokens[:, 1:], targets[:, :-1])  # targets are the next bytes
        seen = set()
        for row, labels in zip(tokens, source):
            for start, end, label in _runs(labels):
                # a run of one label is one or more segments (>= min_segment bytes, but the last of a
                # sequence) cut from that source's text: it splits into that many pieces of the text
                pieces = _pieces(bytes(row[start:end].tolist()), regions[label])
                assert pieces <= (end - start) // SMALL["min_segment"] + 1, (split, label, bytes(row[start:end].tolist()))
                seen.add(label)
        assert seen == {0, 1, 2}


def test_sources_differ_in_kind(data: MixedSourceTextDataModule) -> None:
    code, prose, generated = data.corpora["code"], data.corpora["prose"], data.corpora["data"]
    assert code.count(b"def ") + code.count(b"import ") > 0
    assert prose.count(b" the ") > 0 and prose.count(b"def ") < prose.count(b" the ")
    assert set(generated) <= set(b'0123456789+-*=.,{}":_ \nabcdefghijklmnopqrstuvwxyz')


def test_splits_are_disjoint_regions(data: MixedSourceTextDataModule) -> None:
    for name, text in zip(SOURCES, zip(*(data.regions(s) for s in ("train", "val", "test")))):
        assert b"".join(text) == data.corpora[name]


def test_deterministic_from_seed() -> None:
    first, again, other = (MixedSourceTextDataModule(**SMALL, seed=s) for s in (0, 0, 1))
    for module in (first, again, other):
        module.setup()
    assert all(torch.equal(a, b) for a, b in zip(first.splits["train"].tensors, again.splits["train"].tensors))
    assert not torch.equal(first.splits["train"].tensors[0], other.splits["train"].tensors[0])


def test_a_second_setup_reads_the_standard_library_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code and prose corpora are kept per process: a data module set up again (fit, then test) parses no
    file, and gets the same bytes."""
    from gmnn.data import text

    def module(source_bytes: int) -> MixedSourceTextDataModule:
        return MixedSourceTextDataModule(**{**SMALL, "source_bytes": source_bytes})

    first = module(SMALL["source_bytes"] + 1)  # a size no other test caches
    first.setup()

    def parse(source: str) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(text, "split_source", parse)
    again = module(SMALL["source_bytes"] + 1)
    again.setup()
    assert again.corpora == first.corpora
    with pytest.raises(AssertionError, match="parsed again"):  # another size reads the files
        module(SMALL["source_bytes"] + 2).setup()


def test_batches_and_linked_sizes(data: MixedSourceTextDataModule) -> None:
    tokens, targets, source = next(iter(data.train_dataloader()))
    assert tokens.shape == targets.shape == source.shape == (8, SMALL["seq_len"])
    assert tokens.dtype == targets.dtype == source.dtype == torch.long
    assert data.input_shape == [SMALL["seq_len"]] and data.num_classes == 256
    assert data.num_labels == 3 and data.label_names == ["code", "prose", "data"]
    assert 1.0 < data.label_entropy("train") <= 1.585


def test_docstrings_split_from_code() -> None:
    code, docs = split_source('"""Module doc."""\nimport os\n\n\ndef f():\n    """Function doc."""\n    return 1\n')
    assert docs == ["Module doc.", "Function doc."]
    assert "doc" not in code and "import os" in code and "return 1" in code
    ast.parse(code)
    assert stdlib_files(0) and all(p.suffix == ".py" for p in stdlib_files(0))
    assert data_corpus(500, 0) == data_corpus(500, 0) and len(data_corpus(500, 0)) == 500


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(sources=["code", "poetry"]), "sources"), (dict(sources=[]), "sources"), (dict(seq_len=0), "seq_len"),
     (dict(min_segment=10, max_segment=5), "max_segment"), (dict(source_bytes=100), "source_bytes")],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MixedSourceTextDataModule(**kwargs)


def test_byte_classes_by_hand() -> None:
    from gmnn.data.text import BYTE_CLASSES, byte_classes

    tokens = torch.tensor(list(b"aZ09 \t\n.,_#") + [0, 127, 200, 255])
    expected = ["letter", "letter", "digit", "digit", "whitespace", "whitespace", "whitespace",
                "punctuation", "punctuation", "punctuation", "punctuation", "other", "other", "other", "other"]
    assert [BYTE_CLASSES[i] for i in byte_classes(tokens).tolist()] == expected
    assert byte_classes(tokens.reshape(3, 5)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"tokens must be bytes in \[0, 256\)"):
        byte_classes(torch.tensor([256]))
    with pytest.raises(ValueError, match="integer tensor"):
        byte_classes(torch.tensor([1.0]))


def test_byte_class_labelling_labels_the_same_bytes(data: MixedSourceTextDataModule) -> None:
    """``label="byte_class"`` keeps the tokens and targets and labels each input byte by its class."""
    from gmnn.data.text import BYTE_CLASSES

    classes = MixedSourceTextDataModule(**SMALL, label="byte_class")
    classes.setup("fit")
    assert classes.label_names == list(BYTE_CLASSES) and classes.num_labels == 5
    tokens, targets, labels = classes.splits["train"].tensors
    assert torch.equal(tokens, data.splits["train"].tensors[0]) and torch.equal(targets, data.splits["train"].tensors[1])
    for token, label in zip(tokens.flatten().tolist()[:300], labels.flatten().tolist()[:300]):
        character = chr(token)
        name = ("letter" if character.isascii() and character.isalpha() else "digit" if character.isdigit() and character.isascii()
                else "whitespace" if character in " \t\n\r\x0b\x0c" else "punctuation" if character.isascii()
                and character.isprintable() else "other")
        assert BYTE_CLASSES[label] == name, (token, BYTE_CLASSES[label])
    counts = torch.bincount(labels.flatten(), minlength=5).double()
    p = counts / counts.sum()
    assert classes.label_entropy("train") == pytest.approx(float(-(p[p > 0] * p[p > 0].log2()).sum()))
    with pytest.raises(ValueError, match="label"):
        MixedSourceTextDataModule(**SMALL, label="words")
