"""Non-contiguous and offset views (transposed, sliced, expanded, permuted) saved as they are.

    strided_views.py OUT.pt REF.safetensors
"""
import sys, json, torch
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
torch.manual_seed(2)
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
d = {
    "wt": torch.randn(3, 5).t(),
    "slice": base[1:3, ::2],
    "column": base[:, 4],
    "expanded": torch.tensor([7.0]).expand(3, 4),
    "narrow": torch.arange(10, dtype=torch.int64)[3:7],
    "permuted": torch.randn(2, 3, 4).permute(2, 0, 1),
    "half_t": torch.randn(2, 3).half().t(),
    "bool_t": (torch.randn(3, 2) > 0).t(),
}
for k in ["wt", "slice", "column", "expanded", "permuted", "half_t", "bool_t"]:
    assert not d[k].is_contiguous(), k
assert d["narrow"].storage_offset() == 3
torch.save(d, pt)
save_file({k: v.contiguous() for k, v in d.items()}, ref)
print(json.dumps(list(d.keys())))
