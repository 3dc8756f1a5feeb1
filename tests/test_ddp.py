"""QAT of a quantize_model model under DistributedDataParallel (and FSDP2's fully_shard where it
works on CPU): 2 CPU processes, gloo backend.

Each rank calibrates on its own data; DDP's start-up broadcast makes both ranks equal, QAT steps
(with learned weight and activation ranges) keep them equal, and rank 0's checkpoint loads into a
fresh quantized model that then computes the same outputs. Observers agree across ranks (issue 9
item 5): DDP training without calibration leaves identical observer state on both ranks, and
calibration with data sharded over the ranks equals calibration on the whole data in one process.
"""
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from qlayers.model import calibrate, quantize_model

WORLD = 2
STEPS = 3
TIMEOUT_S = 120
CONFIG = {
    "weights": {"format": "int8", "granularity": "channel", "learned_scale": True},
    "inputs": {"format": "int8", "observer": "global_minmax", "learned_scale": True},
    "bias": {"format": "int32"},
    "layers": {"head": {"weights": {"format": "mxfp4"}, "inputs": {"format": "mxfp8"}, "bias": None}},
}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 16)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.block = Block()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def _quantized_net(seed, config=CONFIG):
    torch.manual_seed(seed)
    return quantize_model(Net(), config)


# one observer kind per layer ("minmax" is the last batch); ranges from each batch's maximum
OBSERVED = {
    "weights": {"format": "int8", "granularity": "channel"},
    "inputs": {"format": "int8", "observer": "global_minmax"},
    "layers": {
        "block.fc1": {"inputs": {"format": "int8", "observer": "mean"}},
        "block.fc2": {"inputs": {"format": "int8", "observer": "ema_minmax", "momentum": 0.5}},
        "head": {"inputs": {"format": "uint8", "symmetric": False, "observer": "minmax"}},
    },
}
SHARD_BATCHES = 3


def _shards():
    """Per rank, its calibration batches (rank r's batch i has scale i + 2r + 1)."""
    generator = torch.Generator().manual_seed(300)
    data = [[torch.randn(4, 8, generator=generator) * (i + 2 * r + 1) for i in range(SHARD_BATCHES)] for r in range(WORLD)]
    return data


def _observer_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".observer." in k}


def _worker(rank, port, out_dir):
    """One spawn for both runs (DDP, then FSDP) to pay the process start-up once."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        _observer_sync_run(rank, out_dir)
        _ddp_run(rank, out_dir)
        dist.barrier()
        _fsdp_run(rank, out_dir)
    finally:
        dist.destroy_process_group()


def _ddp_run(rank, out_dir):
    model = _quantized_net(seed=rank)  # different initial weights and calibration data per rank
    generator = torch.Generator().manual_seed(100 + rank)
    calibrate(model, [torch.randn(8, 8, generator=generator) * (rank + 1) for _ in range(2)], progress=False)
    _train(nn.parallel.DistributedDataParallel(model), generator)
    _save(model, lambda t: t, os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(out_dir, "checkpoint.pt"))


def _observer_sync_run(rank, out_dir):
    """Observers only: DDP steps without calibration, and calibration on this rank's shard."""
    model = _quantized_net(0, OBSERVED)
    ddp = nn.parallel.DistributedDataParallel(model)
    generator = torch.Generator().manual_seed(400 + rank)
    for _ in range(2):  # training mode: static quantizers follow each batch and update their observers
        ddp(torch.randn(8, 8, generator=generator) * (rank + 1)).sum().backward()
    trained = _observer_state(model)
    calibrate(model, _shards()[rank], reset=True, progress=False)  # no optimizer step: weights as built
    torch.save({"trained": trained, "calibrated": _observer_state(model)}, os.path.join(out_dir, f"observers{rank}.pt"))


def _fsdp_run(rank, out_dir):
    try:  # does FSDP work here at all (CPU, gloo)? Otherwise the test skips.
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        probe_model = nn.Linear(4, 4)
        fully_shard(probe_model)
        probe_model(torch.ones(2, 4)).sum().backward()
    except Exception as error:  # noqa: BLE001 - any failure of plain FSDP means "not available"
        torch.save({"skip": f"{type(error).__name__}: {error}"}, os.path.join(out_dir, f"fsdp{rank}.pt"))
        return
    model = _quantized_net(seed=0)  # FSDP does not broadcast: same start on every rank
    calibrate(model, [torch.randn(8, 8, generator=torch.Generator().manual_seed(100)) for _ in range(2)], progress=False)
    fully_shard(model)
    _train(model, torch.Generator().manual_seed(200 + rank))
    _save(model, lambda t: t.full_tensor() if isinstance(t, DTensor) else t, os.path.join(out_dir, f"fsdp{rank}.pt"))


def _train(module, generator):
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    module.train()
    for _ in range(STEPS):
        x = torch.randn(16, 8, generator=generator)
        loss = nn.functional.mse_loss(module(x), x[:, :4])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _save(model, gather, path):
    """The full state (``gather`` unshards FSDP tensors) and the eval outputs on a fixed probe."""
    model.eval()
    state = {k: gather(v).detach().clone() for k, v in model.state_dict().items()}
    probe = torch.linspace(-2, 2, 5 * 8).reshape(5, 8)
    with torch.no_grad():
        output = model(probe)
    torch.save({"state": state, "output": output, "probe": probe}, path)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(fn, *args):
    context = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s")


needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The directory where both ranks left their results."""
    out = tmp_path_factory.mktemp("distributed")
    _run(_worker, _free_port(), str(out))
    return out


@needs_gloo
def test_ddp_training_without_calibration_keeps_observers_identical(runs):
    results = [torch.load(runs / f"observers{r}.pt") for r in range(WORLD)]
    trained = [r["trained"] for r in results]
    assert sorted(trained[0]) == sorted(trained[1]) and any(k.endswith("observer.low") for k in trained[0])
    for key in trained[0]:
        assert not key.endswith("high") or trained[0][key].numel() > 0, key  # every observer saw the batches
        assert torch.equal(trained[0][key], trained[1][key]), key


@needs_gloo
def test_calibration_sharded_over_ranks_equals_one_process_on_the_whole_data(runs):
    results = [torch.load(runs / f"observers{r}.pt")["calibrated"] for r in range(WORLD)]
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key
    shards = _shards()
    # one process, every batch in turn: global min/max and mean see what the ranks saw together
    model = _quantized_net(0, OBSERVED)
    calibrate(model, [x for shard in shards for x in shard], progress=False)
    one = _observer_state(model)
    # one process, each step's global batch (the ranks' batches together): last batch and EMA
    calibrate(model, [torch.cat(step) for step in zip(*shards)], reset=True, progress=False)
    steps = _observer_state(model)
    for key, value in results[0].items():
        if key.startswith(("stem.", "block.eltwise")):  # global_minmax
            assert torch.equal(value, one[key]) and torch.equal(value, steps[key]), key
        elif key.startswith("block.fc1."):  # mean, up to float summation order
            torch.testing.assert_close(value, one[key], rtol=1e-6, atol=0)
        else:  # EMA and last batch (head: asymmetric, (min, max))
            assert torch.equal(value, steps[key]), key
    assert float(results[0]["block.fc1.input_quant.observer.count"]) == WORLD * SHARD_BATCHES


@needs_gloo
def test_ddp_qat_keeps_ranks_identical_and_checkpoint_loads(runs):
    tmp_path = runs
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    states = [r["state"] for r in results]
    assert list(states[0]) == list(states[1])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert any(k.endswith("learned_range") for k in states[0])  # learned ranges were trained and synced
    assert any(k.endswith("observer.high") and states[0][k].numel() for k in states[0])
    assert torch.equal(results[0]["output"], results[1]["output"])

    initial = _quantized_net(seed=0).state_dict()
    assert not torch.equal(initial["stem.weight"], states[0]["stem.weight"])  # training changed the weights

    fresh = _quantized_net(seed=7)
    fresh.load_state_dict(torch.load(tmp_path / "checkpoint.pt"))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(results[0]["probe"]), results[0]["output"])


@needs_gloo
def test_fsdp_qat_where_fsdp_works_on_cpu(runs):
    tmp_path = runs
    results = [torch.load(tmp_path / f"fsdp{r}.pt") for r in range(WORLD)]
    if "skip" in results[0]:
        pytest.skip(f"FSDP does not work on this CPU build: {results[0]['skip']}")
    states = [r["state"] for r in results]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert not torch.equal(_quantized_net(seed=0).state_dict()["stem.weight"], states[0]["stem.weight"])
    fresh = _quantized_net(seed=7)
    fresh.load_state_dict(states[0])
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(results[0]["probe"]), results[0]["output"])
