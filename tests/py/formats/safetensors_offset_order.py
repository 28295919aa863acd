"""The tensor names of a safetensors file in the order of their data offsets, as JSON.

    safetensors_offset_order.py FILE.safetensors
"""
import sys, json, struct
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
header.pop("__metadata__", None)
print(json.dumps(sorted(header, key=lambda k: header[k]["data_offsets"])))
