"""Writes the small committed fixtures of tests/fixtures/formats/, with which tests/
checkpoint_fixtures.rs tests the readers on files PyTorch wrote even where no Python is
installed. Run it again (and commit the result) only when a fixture should change:

    OMP_NUM_THREADS=1 $TCH_PRUNE_PYTHON tests/py/make_fixtures.py tests/fixtures/formats

(one thread, as the tests run it: batch norm's statistics depend on the order of the sums).

Each `<name>.ref.safetensors` holds the values `<name>` must read as (contiguous copies, written by
safetensors, read in the tests by tch's own safetensors reader), and expected.json the key order
PyTorch gives for each file. Seeds are fixed; the files are a few KB each.
"""
import json
import os
import sys
import zipfile

import torch
from torch import nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "formats"))
from edge_values import every_dtype  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
path = lambda name: os.path.join(out, name)
expected = {}


def reference(name, sd):
    # clone: safetensors refuses tensors that share memory (views, tied weights).
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, path(name + ".ref.safetensors"))
    expected[name] = list(sd.keys())


# A small MLP's state dict, as torch.save writes it, and as safetensors.
torch.manual_seed(0)
mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
sd = mlp.state_dict()
torch.save(sd, path("mlp.pt"))
save_file({k: v.contiguous() for k, v in sd.items()}, path("mlp.safetensors"))
reference("mlp.pt", sd)

# Views of one storage, tied and strided tensors, an empty view and a 0-d tensor.
torch.manual_seed(2)
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
views = {
    "base": base,
    "wt": torch.randn(3, 5).t(),
    "slice": base[1:3, ::2],
    "column": base[:, 4],
    "expanded": torch.tensor([7.0]).expand(3, 4),
    "narrow": torch.arange(10, dtype=torch.int64)[3:7],
    "again": base,
    "half_t": torch.randn(2, 3).half().t(),
    "bool_t": (torch.randn(3, 2) > 0).t(),
    "empty_view": torch.arange(5.0)[5:],
    "scalar": torch.tensor(3.5),
}
torch.save(views, path("views.pt"))
assert sum("/data/" in n for n in zipfile.ZipFile(path("views.pt")).namelist()) == 8  # base, slice, column and again share one
reference("views.pt", views)

# One tensor of each supported dtype, with the edge values of each.
dtypes = every_dtype()
torch.save(dtypes, path("dtypes.pt"))
save_file(dtypes, path("dtypes.safetensors"))
reference("dtypes.pt", dtypes)

# A state dict nested in a training checkpoint, at pickle protocol 2.
torch.manual_seed(5)
bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
bn(torch.randn(5, 4))
torch.save({"epoch": 3, "state_dict": bn.state_dict(), "flags": {1, 2}, "blob": b"abc", "big": 2**70},
           path("nested.pt"), pickle_protocol=2)
reference("nested.pt", bn.state_dict())

# The TorchScript archive of a model with batch norm, after a training step.
torch.manual_seed(4)
scripted = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
scripted.train()
scripted(torch.randn(5, 4))
torch.jit.save(torch.jit.script(scripted), path("script.pt"))
reference("script.pt", torch.jit.load(path("script.pt")).state_dict())

# The small files the fuzz tests truncate and flip byte by byte.
torch.manual_seed(6)
torch.save(nn.Linear(3, 2).state_dict(), path("tiny.pt"))
torch.manual_seed(6)
torch.jit.save(torch.jit.script(nn.Linear(3, 2)), path("tiny_script.pt"))

# A torch.export archive: parameters, batch-norm buffers (an int64 one), a tied weight, and a
# non-persistent buffer (a constant of the program, carried but not listed).
class Exported(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)

    def forward(self, x):
        return self.out(self.bn(self.emb(x).mean(1))) * self.scale


torch.manual_seed(7)
exported = Exported()
exported.train()
exported(torch.tensor([[1, 2], [3, 4]]))
exported.eval()
ep = torch.export.export(exported, (torch.tensor([[1, 2], [3, 4]]),))
torch.export.save(ep, path("exported.pt2"))
reference("exported.pt2", dict(torch.export.load(path("exported.pt2")).state_dict))

# Files the readers must refuse.
torch.save(nn.Linear(2, 2).state_dict(), path("legacy.pt"), _use_new_zipfile_serialization=False)


class Harmless:
    # What a malicious checkpoint does (call a function on load), with a harmless function: the
    # readers must refuse the global without calling it.
    def __reduce__(self):
        return (os.system, ("true",))


torch.save({"a": torch.zeros(1), "b": Harmless()}, path("calls_os_system.pt"))

with open(path("expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
    f.write("\n")
