"""One small model as a TorchScript archive, a torch.save state dict and a safetensors file.

    script_and_state_dict.py SCRIPTED.pt SD.pt SD.safetensors
"""
import sys, torch
from safetensors.torch import save_file
pt, sd, st = sys.argv[1:4]
m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
torch.jit.save(torch.jit.script(m), pt)
torch.save(m.state_dict(), sd)
save_file(m.state_dict(), st)
