"""One state dict saved six ways: keep_vars, pickle protocols 4 and 5, nested in a training
checkpoint under 'state_dict' and under 'model', and as if saved from a GPU.

    protocols_and_nesting.py PARAMS.pt P4.pt P5.pt NESTED.pt MODEL.pt CUDA.pt REF.safetensors
"""
import sys, json, torch
from safetensors.torch import save_file
params, p4, p5, nested, model, cuda, ref = sys.argv[1:8]
torch.manual_seed(5)
m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
opt = torch.optim.Adam(m.parameters())
m(torch.randn(5, 4)).sum().backward()
opt.step()
torch.save(m.state_dict(keep_vars=True), params)
torch.save(m.state_dict(), p4, pickle_protocol=4)
torch.save(m.state_dict(), p5, pickle_protocol=5)
torch.save({"epoch": 3, "state_dict": m.state_dict(), "optimizer": opt.state_dict(),
            "lr": 0.1, "note": "x", "flags": {1, 2}, "blob": b"abc", "big": 2**70, "none": None}, nested)
torch.save({"model": m.state_dict(), "step": 10}, model)
# As if saved from a GPU: the storages' location says cuda:0 (this machine may have no GPU).
tag = torch.serialization.location_tag
torch.serialization.location_tag = lambda storage: "cuda:0"
torch.save(m.state_dict(), cuda)
torch.serialization.location_tag = tag
assert b"cuda:0" in __import__("zipfile").ZipFile(cuda).read("cuda/data.pkl")
sd = m.state_dict()
save_file({k: v.contiguous() for k, v in sd.items()}, ref)
print(json.dumps(list(sd.keys())))
