"""One tensor of each supported dtype (edge values: NaN, -0.0, inf, int64 extremes) as .pt and
.safetensors; prints each tensor's name, dtype, shape and raw bytes (hex).

    every_dtype.py OUT.pt OUT.safetensors
"""
import sys, torch
from safetensors.torch import save_file
from edge_values import every_dtype
pt, st = sys.argv[1:3]
d = every_dtype()
torch.save(d, pt)
save_file(d, st)
for k, v in d.items():
    raw = v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
    print(k, str(v.dtype), ",".join(map(str, v.shape)), raw)
