"""torch.save inputs for tests/streaming_torch_save.rs, and the check of its outputs.

    make DIR     writes DIR/model-{float32,float16,bfloat16}.pt (a small model's state dict,
                 values rounded to quarters in one weight so that ties occur), and the inputs
                 the streaming path leaves to the in-memory path: tied.pt (two names, one
                 Parameter), strided.pt (a transposed tensor saved as is), views.pt (two
                 slices of one storage), pruned.pt (a model saved pruned: weight_orig /
                 weight_mask), compressed.pt (a storage entry deflated), and nested.pt
                 ({"state_dict": ..., "epoch": 3}), which streams.
    zeros FILE   loads FILE with torch.load(weights_only=True) and prints, per tensor,
                 "name dtype numel zeros".
"""
import sys
import zipfile
from collections import OrderedDict

import torch
import torch.nn.utils.prune as prune


def model(dtype):
    torch.manual_seed(11)
    w = lambda *shape: torch.randn(*shape).to(dtype)
    tied = (torch.randn(48, 40) * 4).round() / 4
    return OrderedDict(
        [
            ("embed.weight", w(50, 24)),
            ("layers.0.attn.weight", w(24, 24)),
            ("layers.0.attn.bias", w(24)),
            ("layers.0.conv.weight", w(6, 4, 3, 3)),
            ("layers.0.norm.running_mean", torch.zeros(24)),
            ("layers.0.norm.num_batches_tracked", torch.tensor(5)),
            ("layers.1.ff.weight", tied.to(dtype)),
            ("layers.1.ff.bias", w(48)),
            ("head.weight", torch.randn(10, 40)),
            ("position_ids", torch.arange(16)),
        ]
    )


def make(folder):
    for dtype in ["float32", "float16", "bfloat16"]:
        torch.save(model(getattr(torch, dtype)), f"{folder}/model-{dtype}.pt")
    sd = model(torch.float32)
    torch.save({"state_dict": sd, "epoch": 3}, f"{folder}/nested.pt")

    lin = torch.nn.Linear(8, 8)
    emb = torch.nn.Embedding(8, 8)
    emb.weight = lin.weight
    torch.save(torch.nn.Sequential(emb, lin).state_dict(), f"{folder}/tied.pt")

    strided = OrderedDict(sd)
    strided["layers.0.attn.weight"] = sd["layers.0.attn.weight"].t()
    torch.save(strided, f"{folder}/strided.pt")

    base = torch.randn(8, 6)
    torch.save(OrderedDict([("a.weight", base[:3]), ("b.weight", base[3:])]), f"{folder}/views.pt")

    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 2))
    prune.l1_unstructured(net[0], "weight", 0.5)
    torch.save(net.state_dict(), f"{folder}/pruned.pt")

    # The same archive with the storage of "embed.weight" deflated.
    src = f"{folder}/model-float32.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(f"{folder}/compressed.pt", "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith("/data/0") else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info.filename), compress_type=method)


def zeros(path):
    sd = torch.load(path, weights_only=True)
    for name, t in sd.items():
        print(name, str(t.dtype).removeprefix("torch."), t.numel(), int((t == 0).sum()))


if __name__ == "__main__":
    {"make": make, "zeros": zeros}[sys.argv[1]](sys.argv[2])
