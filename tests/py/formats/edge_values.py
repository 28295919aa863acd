"""One tensor of each dtype the crate reads, holding that dtype's edge values (NaN, -0.0, inf,
subnormals, integer extremes): shared by every_dtype.py and ../make_fixtures.py."""
import torch

FLOATS = [0.0, -0.0, 1.5, -2.25, float("inf"), float("-inf"), float("nan"), 1e-40, 3.4e38]


def every_dtype():
    return {
        "f32": torch.tensor(FLOATS, dtype=torch.float32),
        "f16": torch.tensor([0.0, -0.0, 1.5, 65504.0, float("inf"), float("nan"), 6e-8], dtype=torch.float16),
        "bf16": torch.tensor([0.0, -0.0, 1.5, 3e38, float("-inf"), float("nan"), 1e-39], dtype=torch.bfloat16),
        "f64": torch.tensor(FLOATS + [1e-310, 1.7e308], dtype=torch.float64),
        "i64": torch.tensor([0, -1, 2**63 - 1, -2**63, 2**53 + 1], dtype=torch.int64),
        "i32": torch.tensor([0, -1, 2**31 - 1, -2**31], dtype=torch.int32),
        "i16": torch.tensor([0, -1, 32767, -32768], dtype=torch.int16),
        "i8": torch.tensor([0, -1, 127, -128], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 128, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
    }
