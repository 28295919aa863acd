"""TorchScript exports written by the crate load where no GPU is visible, with every tensor on
the CPU, the module's code, names and trainability kept, and the pruned values in place.

    script_export.py make DIR
        writes DIR/cnn.ts.pt, a scripted CNN with batch norm (non-trivial running statistics)
    script_export.py check ORIGINAL.pt EXPECTED.safetensors EXPORT.pt [EXPORT.pt ...]
        EXPECTED holds the parameters the exports must hold; buffers must be ORIGINAL's.
        Prints OK, or fails with the first difference.
"""
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file


def make(folder):
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                      nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    m.train()
    m(torch.randn(4, 3, 8, 8))
    m.eval()
    m[4].weight.requires_grad_(False)  # a frozen parameter stays frozen
    torch.jit.save(torch.jit.script(m), f"{folder}/cnn.ts.pt")


def check(original, expected, exports):
    assert not torch.cuda.is_available(), "the check must run with no GPU visible"
    orig = torch.jit.load(original)
    params = load_file(expected)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    outputs = []
    for path in exports:
        m = torch.jit.load(path)  # no map_location: the file's own devices
        assert m.code == orig.code, path
        sd, osd = m.state_dict(), orig.state_dict()
        assert list(sd) == list(osd), (path, list(sd))
        for name, t in sd.items():
            assert t.device.type == "cpu", (path, name, t.device)
            want = params[name] if name in params else osd[name]
            assert t.dtype == want.dtype and torch.equal(t, want), (path, name)
        got = [(n, p.requires_grad) for n, p in m.named_parameters()]
        assert got == [(n, p.requires_grad) for n, p in orig.named_parameters()], (path, got)
        assert any(not p.requires_grad for p in m.parameters()), path
        outputs.append(m(x))
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])
    print("OK")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3], sys.argv[4:])
