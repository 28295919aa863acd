"""Checks the files the crate wrote (safetensors, and .pt through torch.load with
weights_only=True, with and without mmap) against what they should hold; prints OK.

    check_written_files.py SOURCE.pt OUT.safetensors OUT.pt
"""
import sys, torch
from safetensors.torch import load_file
src, out_st, out_pt = sys.argv[1:4]
expected = torch.load(src)
mat = torch.arange(15, dtype=torch.float32).reshape(3, 5)
expected.update({
    "mat_t": mat.t(), "grad": torch.ones(2), "empty": torch.zeros(0, 3, dtype=torch.int32),
    "scalar": torch.tensor(2.5, dtype=torch.float64), "mask_t": (mat > 6).t(),
})
def same(a, b):
    # Bytes, so that NaN and -0.0 count; torch.equal on the byte views.
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
for name, loaded in [("safetensors", load_file(out_st)),
                     ("torch.load", torch.load(out_pt, weights_only=True)),
                     ("torch.load mmap", torch.load(out_pt, weights_only=True, mmap=True))]:
    if "on_cuda" in loaded:
        assert same(loaded.pop("on_cuda"), mat.t()), name
    assert set(loaded) == set(expected), (name, set(loaded) ^ set(expected))
    for k, v in expected.items():
        assert same(loaded[k], v), (name, k, loaded[k], v)
print("OK")
