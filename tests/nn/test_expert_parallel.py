"""Expert-parallel MoELayer on 2 gloo CPU processes against the single-process layer with the same weights.

One spawn runs every case (outputs, aux loss and all gradients, from both
ranks) and writes the largest errors to a JSON file; each test reads its case.
A hang (a collective one rank misses) is killed after HANG_LIMIT_S and fails.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import traceback
from pathlib import Path

import pytest
import torch

from gmnn.nn import MLPExperts, MoELayer, SharedExperts, SigmoidRouter, SoftmaxTopKRouter, SwiGLUExperts
from gmnn.nn.moe.parallel import (ExpertParallelMoELayer, check_shardable, clip_grad_norm_, gather_expert_state,
                                     shard_expert_state)
from tests.conftest import free_rendezvous_port

WORLD = 2
HANG_LIMIT_S = 120
TOL = 1e-5


def _uneven(layer: MoELayer) -> MoELayer:
    """Every token's first choice is the last expert (rank 1), no token picks expert 0 (rank 0)."""
    with torch.no_grad():
        layer.router.bias[-1] += 8.0
        layer.router.bias[0] -= 8.0
    return layer


def _aux_free() -> MoELayer:
    router = SigmoidRouter(16, 4, 2, bias=True, balance_rate=0.05, balance_update="manual")
    router.selection_bias.copy_(torch.tensor([0.3, -0.2, 0.1, -0.2]))
    return MoELayer(router=router, experts=MLPExperts(16, 16, 4))


CASES = {
    "top1": lambda: MoELayer(16, 16, 4, k=1),
    "top2": lambda: MoELayer(16, 16, 4, k=2),
    "top1-capacity": lambda: MoELayer(16, 16, 4, k=1, capacity_factor=1.0),
    "top2-capacity": lambda: MoELayer(16, 16, 4, k=2, capacity_factor=1.0),
    "top1-uneven": lambda: _uneven(MoELayer(16, 16, 4, k=1)),
    "top2-uneven": lambda: _uneven(MoELayer(16, 16, 4, k=2)),
    "top2-capacity-uneven": lambda: _uneven(MoELayer(16, 16, 4, k=2, capacity_factor=1.25)),
    "top2-masked": lambda: MoELayer(16, 16, 4, k=2),
    "dense-k=E": lambda: MoELayer(16, 16, 4, k=4),
    "swiglu-shared": lambda: MoELayer(router=SoftmaxTopKRouter(16, 4, 2), experts=SwiGLUExperts(16, 16, 4),
                                      shared=SharedExperts(16, 16, num_shared=2, gate=True)),
    "sigmoid-aux-free-bias": _aux_free,
    "loop-fallback-width6": lambda: MoELayer(6, 10, 4, k=2),
}


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


def _case(name: str, rank: int) -> dict[str, float]:
    torch.manual_seed(0)  # same weights and data on both ranks
    full = CASES[name]()
    d = full.d_model
    xs = torch.randn(WORLD, 2, 12, d)
    cotangents = torch.randn(WORLD, 2, 12, d)
    masks = torch.rand(WORLD, 2, 12) > 0.25 if name.endswith("masked") else [None] * WORLD
    reference = copy.deepcopy(full)
    ref_out, ref_grad_x = [], []
    for r in range(WORLD):  # the single-process layer on each rank's tokens
        x = xs[r].clone().requires_grad_()
        out, aux = reference(x, masks[r])
        ((out * cotangents[r]).sum() + aux).backward()
        ref_out.append((out.detach(), aux.detach()))
        ref_grad_x.append(x.grad)

    layer = ExpertParallelMoELayer(copy.deepcopy(full))
    x = xs[rank].clone().requires_grad_()
    out, aux = layer(x, masks[rank])
    ((out * cotangents[rank]).sum() + aux).backward()
    errors = {"output": _max_err(out, ref_out[rank][0]), "aux": _max_err(aux, ref_out[rank][1]),
              "grad_input": _max_err(x.grad, ref_grad_x[rank])}
    ref_params = dict(reference.named_parameters())
    for pname, param in layer.named_parameters():
        grad = param.grad.clone()
        if pname.startswith("experts."):  # local shard: gather the blocks of all ranks
            parts = [torch.empty_like(grad) for _ in range(WORLD)]
            torch.distributed.all_gather(parts, grad)
            grad = torch.cat(parts)
        else:  # replicated: the caller (DDP) sums over ranks
            torch.distributed.all_reduce(grad)
        errors[f"grad_{pname}"] = _max_err(grad, ref_params[pname].grad)
    if layer.capacity_factor > 0:
        reference(xs[rank], masks[rank])
        layer(xs[rank], masks[rank])
        errors["dropped_fraction"] = _max_err(layer.dropped_fraction, reference.dropped_fraction)
        errors["drops_happen"] = float(reference.dropped_fraction == 0)
    full_state = layer.full_state_dict()  # collective
    errors["full_state_dict"] = max(_max_err(full_state[key], value) for key, value in full.state_dict().items())
    errors["same_keys"] = float(set(full_state) != set(full.state_dict()))
    back = ExpertParallelMoELayer(CASES[name]())
    back.load_full_state_dict(full.state_dict())
    errors["load_full_state_dict"] = max(_max_err(back.state_dict()[key], value) for key, value in layer.state_dict().items())
    shards = [shard_expert_state(full.state_dict(), r, WORLD) for r in range(WORLD)]
    errors["shard_then_gather"] = max(_max_err(gather_expert_state(shards)[key], value)
                                      for key, value in full.state_dict().items())
    single = layer.to_single_process()  # collective
    errors["to_single_process"] = _max_err(single(xs[rank], masks[rank])[0], ref_out[rank][0])
    return errors


def _clip_case(rank: int) -> dict[str, float]:
    """Norm clipping of the sharded layer = ``torch.nn.utils.clip_grad_norm_`` of the full layer on all tokens."""
    torch.manual_seed(0)
    full = MoELayer(router=SoftmaxTopKRouter(16, 4, 2), experts=SwiGLUExperts(16, 16, 4),
                    shared=SharedExperts(16, 16, num_shared=1))
    xs = torch.randn(WORLD, 24, 16)
    reference = copy.deepcopy(full)
    for r in range(WORLD):
        out, aux = reference(xs[r])
        (out.pow(2).sum() + aux).backward()
    max_norm = 0.3 * float(torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()]))
    ref_norm = torch.nn.utils.clip_grad_norm_(list(reference.parameters()), max_norm)
    layer = ExpertParallelMoELayer(copy.deepcopy(full))
    out, aux = layer(xs[rank])
    (out.pow(2).sum() + aux).backward()
    for pname, param in layer.named_parameters():
        if not pname.startswith("experts."):
            torch.distributed.all_reduce(param.grad)  # replicated: what DDP leaves on every rank (summed here)
    norm = clip_grad_norm_(list(layer.parameters()), list(layer.experts.parameters()), max_norm)
    errors = {"norm": _max_err(norm, ref_norm), "clipping_happens": float(not float(ref_norm) > max_norm * 2)}
    ref_params = dict(reference.named_parameters())
    for pname, param in layer.named_parameters():
        grad = param.grad
        if pname.startswith("experts."):
            parts = [torch.empty_like(grad) for _ in range(WORLD)]
            torch.distributed.all_gather(parts, grad)
            grad = torch.cat(parts)
        errors[f"clipped_grad_{pname}"] = _max_err(grad, ref_params[pname].grad)
    return errors


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    results: dict[str, object] = {}
    try:
        for name in CASES:
            results[name] = _case(name, rank)
        results["clip"] = _clip_case(rank)
    except Exception:  # noqa: BLE001 - reported by the test
        results["error"] = traceback.format_exc()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("expert_parallel")
    context = multiprocessing.get_context("spawn")
    port = free_rendezvous_port()
    processes = [context.Process(target=_worker, args=(rank, port, str(out_dir))) for rank in range(WORLD)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=HANG_LIMIT_S)
    hung = [process for process in processes if process.is_alive()]
    for process in hung:
        process.kill()
        process.join()
    if hung:
        pytest.fail(f"expert-parallel workers hung: killed after {HANG_LIMIT_S} s")
    out = []
    for rank in range(WORLD):
        path = out_dir / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no result (exit code {processes[rank].exitcode})"
        out.append(json.loads(path.read_text()))
        assert "error" not in out[-1], out[-1]["error"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_expert_parallel_equals_single_process(results: list[dict], name: str) -> None:
    for rank, per_rank in enumerate(results):
        errors = per_rank[name]
        assert any(key.startswith("grad_experts.") for key in errors)
        bad = {key: value for key, value in errors.items() if not value <= TOL}
        assert not bad, f"rank {rank}, {name}: {bad}"


@pytest.mark.slow
def test_norm_clipping_counts_each_shard_once(results: list[dict]) -> None:
    for rank, per_rank in enumerate(results):
        errors = per_rank["clip"]
        assert any(key.startswith("clipped_grad_experts.") for key in errors)
        bad = {key: value for key, value in errors.items() if not value <= TOL}
        assert not bad, f"rank {rank}: {bad}"


def test_bad_layouts_raise_value_error() -> None:
    with pytest.raises(ValueError, match="num_ranks=3 must divide num_experts=4"):
        shard_expert_state(MoELayer(8, 8, 4).state_dict(), 0, 3)
    with pytest.raises(ValueError, match="rank"):
        shard_expert_state(MoELayer(8, 8, 4).state_dict(), 2, 2)
    from gmnn.nn import ExpertChoiceRouter, SoftMoERouter
    with pytest.raises(ValueError, match=r"^layer.router: expert parallelism supports token-choice routers "
                                         r"\(SoftmaxTopKRouter, NoisyTopKRouter, SigmoidRouter\), got ExpertChoiceRouter"):
        ExpertParallelMoELayer(MoELayer(router=ExpertChoiceRouter(8, 4), experts=MLPExperts(8, 8, 4)))
    with pytest.raises(ValueError, match=r"^blocks.1.ffn.router: .* got SoftMoERouter \(kind 'soft'"):
        check_shardable(MoELayer(router=SoftMoERouter(8, 4), experts=MLPExperts(8, 8, 4)), "blocks.1.ffn")
    check_shardable(MoELayer(router=SigmoidRouter(8, 4, 2), experts=SwiGLUExperts(8, 8, 4)))  # token choice: fine
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_grad_norm_([], [], 0.0)


def test_one_process_without_distributed_equals_the_layer() -> None:
    torch.manual_seed(0)
    full = MoELayer(16, 16, 4, k=2)
    layer = ExpertParallelMoELayer(copy.deepcopy(full))
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(layer(x)[0], full(x)[0], rtol=0, atol=TOL)
