"""Empty tensors, an empty view at the end of its storage, and 0-d tensors.

    empty_and_scalar.py OUT.pt REF.safetensors
"""
import sys, json, torch
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
d = {
    "empty": torch.zeros(0),
    "empty2d": torch.zeros(3, 0, dtype=torch.int64),
    "empty_view": torch.arange(5.0)[5:],
    "scalar": torch.tensor(3.5),
    "int_scalar": torch.tensor(-7),
    "bool_scalar": torch.tensor(True),
}
torch.save(d, pt)
save_file({k: v.contiguous() for k, v in d.items()}, ref)
print(json.dumps(list(d.keys())))
