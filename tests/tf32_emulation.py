"""TF32 arithmetic on a CPU: what a GPU's default float32 convolutions do to the network, reproduced bit for bit
in the inputs (not part of the default test run; tested by tests/test_tf32_emulation.py).

An NVIDIA GPU from Ampere on runs float32 convolutions (cuDNN's default) and, where
torch.backends.cuda.matmul.allow_tf32 is set, matrix products in TF32: each operand is rounded to 10 mantissa bits
(float32 keeps 23), the products are summed in float32. `tf32_model(model)` runs model(x, t) with the operands of
every convolution, linear layer and matrix product rounded that way (round to nearest, ties to even), so a CPU can
show whether this arithmetic, rather than the starting noise, moves a GPU's scores. Not emulated: the order of the
float32 sums (as small as float32's own rounding) and scaled_dot_product_attention (the 7x7 bottleneck's attention,
whose GPU kernel may or may not use TF32).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.overrides import TorchFunctionMode

TF32_BITS = 10  # mantissa bits TF32 keeps of float32's 23
ROUNDED_OPERATIONS = {"conv2d", "linear", "matmul", "__matmul__", "bmm"}


def round_mantissa(x: torch.Tensor, kept_bits: int) -> torch.Tensor:
    """float32 values rounded to `kept_bits` mantissa bits (nearest, ties to even); still stored as float32.
    10 bits is TF32, 7 bits bfloat16."""
    if x.dtype != torch.float32:
        raise TypeError(f"round_mantissa takes float32 tensors, got {x.dtype}")
    if not 1 <= kept_bits <= 22:
        raise ValueError(f"kept_bits must lie in 1 ... 22 (float32 keeps 23), got {kept_bits}")
    dropped = 23 - kept_bits
    bits = x.contiguous().view(torch.int32)
    # add half of the dropped part (minus one unless the kept last bit is odd: ties go to the even neighbour), then drop it
    bits = bits + ((1 << (dropped - 1)) - 1 + ((bits >> dropped) & 1))
    return (bits & ~((1 << dropped) - 1)).view(torch.float32).view(x.shape)


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to TF32's 10 mantissa bits (nearest, ties to even); still stored as float32."""
    return round_mantissa(x, TF32_BITS)


class TF32Operands(TorchFunctionMode):
    """Within this mode, float32 operands of convolutions, linear layers and matrix products are rounded to TF32."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in ROUNDED_OPERATIONS:
            # the two multiplied operands (input and weight, or both matrices); a bias is added in float32
            args = tuple(round_to_tf32(a) if i < 2 and isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a
                         for i, a in enumerate(args))
        return func(*args, **kwargs)


def tf32_model(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """model(x, t) with its convolutions' and matrix products' operands rounded to TF32, as on a GPU by default."""
    def model_in_tf32(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with TF32Operands():
            return model(x, t)

    return model_in_tf32


BFLOAT16_BITS = 7  # bfloat16's mantissa bits (8 significant with the implicit one)
WEIGHTED_OPERATIONS = {"conv2d", "linear"}  # their second operand is a layer's weight


class Bfloat16Activations(TorchFunctionMode):
    """Within this mode, the float32 activations that bfloat16 autocast would multiply in bfloat16 are rounded to its 7
    mantissa bits: the input of each convolution and linear layer (not its weight), both factors of a matrix product
    and the query, key and value of scaled_dot_product_attention. The products are summed in float32."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        rounded = (1 if name in WEIGHTED_OPERATIONS else 2 if name in ROUNDED_OPERATIONS
                   else 3 if name == "scaled_dot_product_attention" else 0)
        args = tuple(round_mantissa(a, BFLOAT16_BITS) if i < rounded and isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a
                     for i, a in enumerate(args))
        return func(*args, **kwargs)


def bfloat16_activations_model(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                               ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """model(x, t) with the activations bfloat16 autocast would round rounded the same way, its weights left in float32."""
    def model_with_rounded_activations(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with Bfloat16Activations():
            return model(x, t)

    return model_with_rounded_activations
