"""Standard layers scripted (Transformer, LSTM, GRU, MultiheadAttention, ...) and a frozen module:
for each, the archive, its reference state and, as one JSON line, the keys of all.

    jit_standard_layers.py OUT_DIR
"""
import sys, os, json, torch, warnings
from torch import nn
from safetensors.torch import save_file
warnings.simplefilter("ignore")
out = sys.argv[1]
torch.manual_seed(7)
class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
    def forward(self, x):
        return self.lin(x)
models = {
    "transformer": torch.jit.script(
        nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2)),
    "lstm": torch.jit.script(nn.LSTM(4, 5, num_layers=2, bidirectional=True)),
    "gru": torch.jit.script(nn.GRU(3, 4, bias=False)),
    "mha": torch.jit.script(nn.MultiheadAttention(8, 2, add_bias_kv=True, kdim=6, vdim=6)),
    "misc": torch.jit.script(nn.Sequential(
        nn.Embedding(10, 4), nn.GroupNorm(2, 4), nn.PReLU(), nn.ConvTranspose1d(4, 2, 3),
        nn.InstanceNorm1d(2, affine=True, track_running_stats=True))),
    "frozen": torch.jit.freeze(torch.jit.script(Frozen().eval())),
}
keys = {}
for name, m in models.items():
    pt = os.path.join(out, name + ".pt")
    torch.jit.save(m, pt)
    sd = torch.jit.load(pt).state_dict()
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()},
              os.path.join(out, name + ".safetensors"))
    keys[name] = list(sd.keys())
print(json.dumps(keys))
