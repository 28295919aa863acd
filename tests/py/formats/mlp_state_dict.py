"""torch.save of a small MLP's state dict, its reference values as safetensors, its keys as JSON.

    mlp_state_dict.py OUT.pt REF.safetensors
"""
import sys, json, torch
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
sd = m.state_dict()
torch.save(sd, pt)
save_file({k: v.contiguous() for k, v in sd.items()}, ref)
print(json.dumps(list(sd.keys())))
