"""Views of one storage, and tied weights, each saved with one storage entry.

    shared_storages.py SHARED.pt TIED.pt SHARED_REF.safetensors TIED_REF.safetensors
"""
import sys, json, zipfile, torch
from safetensors.torch import save_file
pt, tied, ref_shared, ref_tied = sys.argv[1:5]
torch.manual_seed(3)
base = torch.randn(4, 5)
d = {"base": base, "row0": base[0], "rows": base[1:3], "tail": base.view(-1)[7:], "again": base}
torch.save(d, pt)
assert sum("/data/" in n for n in zipfile.ZipFile(pt).namelist()) == 1
save_file({k: v.clone().contiguous() for k, v in d.items()}, ref_shared)
print(json.dumps(list(d.keys())))

class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Embedding(10, 4)
        self.dec = torch.nn.Linear(4, 10, bias=False)
        self.dec.weight = self.enc.weight
sd = Tied().state_dict()
torch.save(sd, tied)
assert sum("/data/" in n for n in zipfile.ZipFile(tied).namelist()) == 1
save_file({k: v.clone().contiguous() for k, v in sd.items()}, ref_tied)
print(json.dumps(list(sd.keys())))
