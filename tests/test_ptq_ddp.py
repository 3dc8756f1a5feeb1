"""Distributed PTQ: GPTQ with the calibration batches sharded over 2 gloo processes equals GPTQ on
all batches in one process, bit for bit (Hessians and error sums are all-reduced).

The data are small integers and the first layer's weights have power-of-two scales, so every
Hessian entry is a sum of exactly representable products: its value does not depend on the
order of summation, and the comparison can be exact."""
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn

from qlayers import ptq
from qlayers.model import quantize_model
from test_ddp import WORLD, _free_port, _run, needs_gloo

CONFIG = {
    "weights": {"format": "int4", "granularity": "group", "group_size": 8},
    "layers": {"0": {"weights": {"format": "int8", "scale": "po2", "granularity": "channel"}}},
}
BATCHES = 4


def _model():
    torch.manual_seed(0)
    return quantize_model(nn.Sequential(nn.Linear(16, 24, bias=False), nn.ReLU(), nn.Linear(24, 8)), CONFIG)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(-3, 4, (8, 16), generator=g).float() for _ in range(BATCHES)]


def _worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        model = _model()
        shard = _batches()[rank::WORLD]
        report = ptq.apply(model, shard, ["gptq"], progress=False)
        torch.save({"state": model.state_dict(), "errors": [(r.error_before, r.error_after) for r in report]},
                   os.path.join(out_dir, f"gptq{rank}.pt"))
    finally:
        dist.destroy_process_group()


@needs_gloo
@pytest.mark.slow  # two spawned processes
def test_gptq_sharded_over_ranks_equals_one_process_on_all_batches(tmp_path):
    _run(_worker, _free_port(), str(tmp_path))
    model = _model()
    report = ptq.apply(model, _batches(), ["gptq"], progress=False)
    expected = model.state_dict()
    assert any(k.endswith("frozen_scale") for k in expected)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"gptq{rank}.pt")
        assert list(result["state"]) == list(expected)
        for key, value in expected.items():
            assert torch.equal(result["state"][key], value), (rank, key)
        for (before, after), row in zip(result["errors"], report):
            assert before == pytest.approx(row.error_before, rel=1e-9) and after == pytest.approx(row.error_after, rel=1e-9)
