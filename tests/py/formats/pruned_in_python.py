"""The state dict of a model pruned by torch.nn.utils.prune (weight_orig, weight_mask).

    pruned_in_python.py OUT.pt REF.safetensors
"""
import sys, json, torch
import torch.nn.utils.prune as prune
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
torch.manual_seed(4)
m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
prune.l1_unstructured(m[0], "weight", 0.4)
prune.l1_unstructured(m[0], "bias", 2)
prune.random_structured(m[2], "weight", 0.5, dim=0)
sd = m.state_dict()
torch.save(sd, pt)
refs = {k: v.contiguous() for k, v in sd.items()}
refs["effective.0.weight"] = m[0].weight.detach().contiguous()
save_file(refs, ref)
print(json.dumps(list(sd.keys())))
