import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmnn.nn.conv_pool import conv_maxpool2, is_plain_conv_pool
from gmnn.nn.networks import ConvNet


@pytest.mark.parametrize(("groups", "in_per_group", "out_channels", "size", "kernel"), [
    (1, 1, 5, 28, 3), (5, 1, 5, 28, 3), (3, 2, 6, 27, 3), (2, 3, 4, 16, 5),
])
def test_matches_conv_then_max_pool(groups: int, in_per_group: int, out_channels: int, size: int, kernel: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, in_per_group * groups, size, size + 1)
    weight = torch.randn(out_channels, in_per_group, kernel, kernel, requires_grad=True)
    bias = torch.randn(out_channels, requires_grad=True)
    expected = F.max_pool2d(F.conv2d(x, weight, bias, groups=groups), 2)
    out = conv_maxpool2(x, weight, bias, groups)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad((out * upstream).sum(), (weight, bias))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (weight, bias))
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_weight_gradient_on_a_constant_background_equals_max_pool() -> None:
    """Tied phases (identical patches) split the gradient, which leaves the weight gradient unchanged."""
    torch.manual_seed(1)
    x = torch.full((3, 1, 12, 12), -0.4)
    x[:, :, 4:8, 3:9] = torch.rand(3, 1, 4, 6)
    weight = torch.randn(2, 1, 3, 3, requires_grad=True)
    bias = torch.randn(2, requires_grad=True)
    expected = torch.relu(F.max_pool2d(F.conv2d(x, weight, bias), 2)).square().sum()
    out = torch.relu(conv_maxpool2(x, weight, bias)).square().sum()
    for a, b in zip(torch.autograd.grad(out, (weight, bias)), torch.autograd.grad(expected, (weight, bias))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_convnet_fast_path_equals_its_standard_layers() -> None:
    net = ConvNet((1, 28, 28), 10, channels=2, hidden_dims=(5, 32))
    x = torch.randn(6, 1, 28, 28)
    logits, hidden = net(x)
    ref_logits, ref_hidden = net.mlp(net.features(x))
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, ref_hidden, atol=1e-5, rtol=1e-5)


def test_only_plain_layers_take_the_fast_path() -> None:
    assert is_plain_conv_pool(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2))
    assert not is_plain_conv_pool(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2))
    assert not is_plain_conv_pool(nn.Conv2d(1, 2, 3, stride=2), nn.MaxPool2d(2))
    assert not is_plain_conv_pool(nn.Conv2d(1, 2, 3), nn.MaxPool2d(3))
    assert not is_plain_conv_pool(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, ceil_mode=True))
    assert not is_plain_conv_pool(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2))
