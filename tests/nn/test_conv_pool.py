import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from gmnn.nn.functional.conv_pool import conv_maxpool2, conv_maxpool2_channels_first, is_plain_conv_pool, phase_max
from gmnn.nn.mixture.networks import ConvNet


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


def test_gradients_on_a_constant_background_equal_max_pool_exactly() -> None:
    """Tied positions of a 2x2 block (identical patches) send the gradient to the first, as max_pool2d does:
    the input gradient matches too, not only the weight gradient."""
    torch.manual_seed(1)
    x = torch.full((3, 1, 12, 12), -0.4)
    x[:, :, 4:8, 3:9] = torch.rand(3, 1, 4, 6)
    x.requires_grad_(True)
    weight = torch.randn(2, 1, 3, 3, requires_grad=True)
    bias = torch.randn(2, requires_grad=True)
    expected = torch.relu(F.max_pool2d(F.conv2d(x, weight, bias), 2)).square().sum()
    out = torch.relu(conv_maxpool2(x, weight, bias)).square().sum()
    grads = torch.autograd.grad(out, (x, weight, bias))
    for a, b in zip(grads, torch.autograd.grad(expected, (x, weight, bias))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (grads[0] != 0).sum() > 0


def test_phase_max_sends_each_gradient_to_the_first_maximum() -> None:
    phases = torch.tensor([[1.0, 5.0, 2.0, 0.0], [3.0, 5.0, 2.0, 0.0], [3.0, 1.0, 2.0, 7.0], [0.0, 1.0, 2.0, 7.0]])
    phases.requires_grad_(True)
    out = phase_max(phases)
    assert out.tolist() == [3.0, 5.0, 2.0, 7.0]
    (grad,) = torch.autograd.grad(out, phases, torch.tensor([10.0, 20.0, 30.0, 40.0]))
    # column 1 ties phases 0 and 1, column 2 ties all four, column 3 ties phases 2 and 3: the first wins
    expected = torch.tensor([[0.0, 20.0, 30.0, 0.0], [10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 40.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(grad, expected)
    assert torch.autograd.gradcheck(phase_max, (torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True),))


def test_experts_batched_in_leading_dimensions_equal_one_convolution_each() -> None:
    torch.manual_seed(2)
    x = torch.randn(3, 4, 2, 11, 12)  # [E, N, C_in, H, W]
    weight = torch.randn(3, 5, 2, 3, 3, requires_grad=True)
    bias = torch.randn(3, 5, requires_grad=True)
    out = conv_maxpool2_channels_first(x, weight, bias)  # [E, c, N, h, w]
    expected = torch.stack([F.max_pool2d(F.conv2d(x[e], weight[e], bias[e]), 2).transpose(0, 1) for e in range(3)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad((out * upstream).sum(), (weight, bias))
    for a, b in zip(grads, torch.autograd.grad((expected * upstream).sum(), (weight, bias))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the path without masks computes the same values
        torch.testing.assert_close(conv_maxpool2_channels_first(x, weight, bias), out.detach())


def test_torch_func_transforms_give_the_autograd_gradient() -> None:
    torch.manual_seed(3)
    x, weight = torch.randn(3, 4, 1, 12, 12), torch.randn(3, 2, 1, 3, 3)

    def loss(one_x: torch.Tensor, one_weight: torch.Tensor) -> torch.Tensor:
        return conv_maxpool2(one_x, one_weight, None).square().sum()

    per_expert = vmap(grad(loss, argnums=1))(x, weight)
    for e in range(3):
        w = weight[e].clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(F.max_pool2d(F.conv2d(x[e], w), 2).square().sum(), w)
        torch.testing.assert_close(per_expert[e], expected, atol=1e-4, rtol=1e-4)


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


def test_two_layers_on_one_input_share_its_windows_and_keep_their_own_gradients() -> None:
    """A conv gate and conv experts read the same batch: the windows are made once (PatchMemo), and the
    values and every gradient (weights and input) equal separate convolutions + max-pools."""
    from gmnn.nn import conv_pool

    torch.manual_seed(2)
    x = torch.randn(6, 1, 12, 12, requires_grad=True)
    w1, w2 = torch.randn(3, 1, 3, 3, requires_grad=True), torch.randn(2, 1, 3, 3, requires_grad=True)
    made = []
    original = conv_pool._windows

    def counting(t: torch.Tensor, window: int) -> torch.Tensor:
        made.append(window)
        return original(t, window)

    conv_pool._windows = counting
    try:
        with torch.no_grad():  # windows without a graph: not reused below, where x's gradient is needed
            conv_maxpool2(x, w1, None)
        a, b = conv_maxpool2(x, w1, None), conv_maxpool2(x, w2, None)
        assert made == [4, 4], "the second layer reuses the first one's windows"
        x2 = x.detach().clone()  # another tensor: its own windows
        conv_maxpool2(x2, w1, None)
        assert made == [4, 4, 4]
        with torch.no_grad():
            x2.add_(1.0)  # changed in place: the windows are made again
        changed = conv_maxpool2(x2, w1, None)
        assert made == [4, 4, 4, 4]
        torch.testing.assert_close(changed, F.max_pool2d(F.conv2d(x2, w1), 2))
    finally:
        conv_pool._windows = original
    upstream_a, upstream_b = torch.randn_like(a), torch.randn_like(b)
    got = torch.autograd.grad((a * upstream_a).sum() + (b * upstream_b).sum(), (x, w1, w2))
    ea, eb = F.max_pool2d(F.conv2d(x, w1), 2), F.max_pool2d(F.conv2d(x, w2), 2)
    torch.testing.assert_close(a, ea, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, eb, atol=1e-5, rtol=1e-5)
    expected = torch.autograd.grad((ea * upstream_a).sum() + (eb * upstream_b).sum(), (x, w1, w2))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_the_windows_memo_holds_no_input_alive() -> None:
    import gc
    import weakref

    from gmnn.nn.functional.conv_pool import PATCH_MEMO

    x = torch.randn(2, 1, 8, 8)
    conv_maxpool2(x, torch.randn(1, 1, 3, 3), None)
    alive = weakref.ref(x)
    del x
    gc.collect()
    assert alive() is None and PATCH_MEMO.patches is None, "the input and its windows are freed together"
    with torch.inference_mode():  # inference tensors have no version counter: no memo, still correct
        y = torch.randn(2, 1, 8, 8)
        w = torch.randn(1, 1, 3, 3)
        torch.testing.assert_close(conv_maxpool2(y, w, None), F.max_pool2d(F.conv2d(y, w), 2))
