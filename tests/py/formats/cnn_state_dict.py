"""A CNN with batch norm after two training steps: its state dict, reference and keys.

    cnn_state_dict.py OUT.pt REF.safetensors
"""
import sys, json, torch
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
torch.manual_seed(1)
m = torch.nn.Sequential(
    torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
    torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
m.train()
m(torch.randn(2, 3, 8, 8)); m(torch.randn(2, 3, 8, 8))
sd = m.state_dict()
assert sd["1.num_batches_tracked"].dtype == torch.int64
torch.save(sd, pt)
save_file({k: v.contiguous() for k, v in sd.items()}, ref)
print(json.dumps(list(sd.keys())))
