"""torch.compile(fullgraph=True) of a model quantized by quantize_model equals eager."""
import torch
from torch import nn

from qlayers.model.functional import traced_adds
from qlayers.model import calibrate, quantize_model


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block(32)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.block(x))


def test_compiled_quantized_model_equals_eager():
    """Frozen calibrated int8 inputs, a residual add rewritten by fx (a GraphModule block), a
    learned weight range: one graph, same bits as eager. (The layers' own tests compile biases,
    MX and NVFP4.)"""
    torch.manual_seed(0)
    q = quantize_model(Net(), {
        "weights": {"format": "int8", "granularity": "channel"},
        "inputs": {"format": "int8", "observer": "global_minmax"},
        "layers": {"block.fc2": {"weights": {"format": "int8", "granularity": "channel", "learned_scale": True}}},
        "functional_adds": True,
    })
    assert traced_adds(q.block)
    calibrate(q, [torch.randn(4, 32) for _ in range(2)], progress=False)
    q.eval()
    compiled = torch.compile(q, fullgraph=True)
    for scale in (1.0, 4.0):
        x = torch.randn(3, 32) * scale
        with torch.no_grad():
            expected, got = q(x), compiled(x)
        assert torch.equal(got, expected)
