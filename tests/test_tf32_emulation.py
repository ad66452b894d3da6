"""The CPU's emulation of a GPU's TF32 arithmetic (tests/tf32_emulation.py), against values worked out by hand."""

import pytest
import torch

from tf32_emulation import bfloat16_activations_model, round_mantissa, round_to_tf32, tf32_model


def test_rounding_keeps_ten_mantissa_bits_to_the_nearest_even():
    ulp = 2.0**-10  # TF32's spacing just above 1
    values = torch.tensor([1.0, 1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + 3 * ulp / 2), 1 + ulp / 2 + 2.0**-20, 3.0, -0.0, 1 + 0.4 * ulp])
    expected = torch.tensor([1.0, 1.0, 1 + 2 * ulp, -(1 + 2 * ulp), 1 + ulp, 3.0, -0.0, 1.0])
    assert torch.equal(round_to_tf32(values), expected)  # ties go to the even neighbour; above a tie, up


def test_rounding_error_and_dropped_bits():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 100
    rounded = round_to_tf32(x)
    assert (rounded.view(torch.int32) & 0x1FFF).eq(0).all()  # the 13 mantissa bits TF32 drops are zero
    relative = ((rounded - x) / x).abs()
    assert relative.max() <= 2.0**-11 and relative.max() > 2.0**-12  # at most half a TF32 step, and not less
    assert torch.equal(round_to_tf32(rounded), rounded)  # TF32 values stay as they are
    with pytest.raises(TypeError, match="float32"):
        round_to_tf32(x.double())


def test_model_sees_rounded_operands_and_float32_bias():
    torch.manual_seed(0)
    conv, linear = torch.nn.Conv2d(2, 3, 3), torch.nn.Linear(4, 5)

    def model(x, t):
        h = linear(conv(x).flatten(1)[:, :4])  # a convolution, then a linear layer, each with a bias
        return h @ h.T + t[:, None]  # a matrix product

    x, t = torch.randn(2, 2, 6, 6), torch.ones(2)
    with torch.no_grad():
        convolved = torch.nn.functional.conv2d(round_to_tf32(x), round_to_tf32(conv.weight), conv.bias).flatten(1)[:, :4]
        h = torch.nn.functional.linear(round_to_tf32(convolved), round_to_tf32(linear.weight), linear.bias)
        expected = round_to_tf32(h) @ round_to_tf32(h.T.contiguous()) + t[:, None]
        assert torch.allclose(tf32_model(model)(x, t), expected, atol=1e-6, rtol=0)
        assert not torch.allclose(tf32_model(model)(x, t), model(x, t), atol=1e-6, rtol=0)


def test_seven_kept_bits_are_bfloat16_and_bad_bit_counts_are_refused():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * 10
    assert torch.equal(round_mantissa(x, 7), x.bfloat16().float())  # PyTorch's own round-to-nearest-even
    assert torch.equal(round_mantissa(x, 10), round_to_tf32(x))
    for bits in (0, 23):
        with pytest.raises(ValueError, match="kept_bits"):
            round_mantissa(x, bits)


def test_bfloat16_activations_round_inputs_but_not_weights():
    torch.manual_seed(0)
    conv, linear = torch.nn.Conv2d(2, 3, 3), torch.nn.Linear(4, 4)

    def model(x, t):
        h = linear(conv(x).flatten(1)[:, :4])
        q = k = v = h[:, None, :, None].expand(-1, 1, 4, 2).contiguous()
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).flatten(1) + h @ h.T[:, :1] + t[:, None]

    def bf(a):
        return a.bfloat16().float()

    x, t = torch.randn(2, 2, 6, 6), torch.ones(2)
    with torch.no_grad():
        convolved = torch.nn.functional.conv2d(bf(x), conv.weight, conv.bias).flatten(1)[:, :4]
        h = torch.nn.functional.linear(bf(convolved), linear.weight, linear.bias)
        q = bf(h[:, None, :, None].expand(-1, 1, 4, 2).contiguous())
        expected = torch.nn.functional.scaled_dot_product_attention(q, q, q).flatten(1) + bf(h) @ bf(h.T[:, :1].contiguous()) + t[:, None]
        assert torch.allclose(bfloat16_activations_model(model)(x, t), expected, atol=1e-6, rtol=0)
        assert not torch.allclose(bfloat16_activations_model(model)(x, t), model(x, t), atol=1e-5, rtol=0)
