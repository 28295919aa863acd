"""Files PyTorch writes that are no state dict the readers accept: custom classes (one whose
unpickling would run a command that creates MARKER), what is not a dict of tensors, and
unsupported dtypes. The readers must refuse each, naming why.

    rejected_files.py OUT_DIR MARKER
"""
import os
import sys

import torch
from safetensors.torch import save_file

out, marker = sys.argv[1:3]
path = lambda name: os.path.join(out, name)


class Foo:
    pass


torch.save({"a": torch.zeros(1), "b": Foo()}, path("custom.pt"))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + marker,))


torch.save({"a": torch.zeros(1), "b": Evil()}, path("evil.pt"))
assert not os.path.exists(marker)

torch.save([torch.zeros(1), torch.ones(1)], path("list.pt"))
torch.save({"a": torch.zeros(1), "b": 3}, path("mixed.pt"))
torch.save(torch.zeros(2), path("tensor.pt"))
torch.save({1: torch.zeros(1)}, path("int_key.pt"))
torch.save({"state_dict": {"w": torch.zeros(1), "step": 4}, "epoch": 1}, path("bad_nested.pt"))

torch.save({"a": torch.zeros(1), "c": torch.zeros(2, dtype=torch.complex64)}, path("complex.pt"))
save_file({"a": torch.zeros(1), "u": torch.zeros(2, dtype=torch.uint16)}, path("u16.safetensors"))
