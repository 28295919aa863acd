"""The TorchScript code of every real model the test suites build, for the code policy's check
(tests/architectures.rs): no real model may be refused.

    code_corpus.py TESTS_PY_DIR OUT_DIR

Writes OUT_DIR/<model>.<how>.pt: zips holding only the `code/**.py` entries of what
`torch.jit.save` writes (the policy reads nothing else), for
- every torchvision classification model (scripts/shrink_sweep.py's set), scripted: built on the
  meta device, since only the code matters;
- torchvision's detection (into OUT_DIR/torchvision_ops: they call torchvision's own operators),
  segmentation, video, optical-flow and quantizable models, scripted;
- a set of them traced, and quantized (scripted and traced);
- the models of tests/py/architectures.py (scripted, and GPT-2 and BERT traced as it does) and
  tests/py/shrink_architectures.py, and more Hugging Face models traced;
- the TorchScript models of tests/py/formats (their scripts, run into OUT_DIR/formats).

RegNet copies tensors while it builds, so it cannot be built on the meta device: its family is
checked at 400mf, built on the CPU (its code does not depend on its size).

Prints one line per model written, "skip <name>: <why>" for the few torchvision itself cannot
script or trace, and "done" at the end.
"""
import io
import os
import subprocess
import sys
import warnings
import zipfile

import torch
import torchvision

TESTS_PY, OUT = os.path.abspath(sys.argv[1]), sys.argv[2]
sys.path.insert(0, TESTS_PY)
warnings.simplefilter("ignore")
tv = torchvision.models


def write(name, module):
    """Saves `module`'s code (only) as OUT/<name>.pt."""
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as z, zipfile.ZipFile(os.path.join(OUT, f"{name}.pt"), "w") as out:
        for entry in z.namelist():
            if entry.endswith(".py"):
                out.writestr(entry, z.read(entry))
    print(name, flush=True)


def attempt(name, make):
    try:
        write(name, make())
    except Exception as e:  # noqa: BLE001 - models torchvision itself cannot script or trace
        print(f"skip {name}: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}", flush=True)


def build(name, module=None, **kw):
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=False)
    try:
        with torch.device("meta"):
            return tv.get_model(name, weights=None, **kw).eval()
    except Exception:  # noqa: BLE001 - RegNet copies tensors while it builds
        return None


def main():
    os.makedirs(os.path.join(OUT, "torchvision_ops"), exist_ok=True)
    # Every classification model, scripted.
    for name in sorted(tv.list_models(module=tv)):
        model = build(name)
        if model is None and name in ("regnet_x_400mf", "regnet_y_400mf"):
            model = tv.get_model(name, weights=None).eval()
        if model is None:
            print(f"skip {name}: builds only on the CPU (its family is checked at 400mf)")
            continue
        attempt(f"{name}.script", lambda: torch.jit.script(model))
    # The other families, scripted.
    families = [tv.detection, tv.segmentation, tv.video, tv.optical_flow, tv.quantization]
    for family in families:
        for name in sorted(tv.list_models(module=family)):
            kw = {"quantize": False} if family is tv.quantization else {"weights_backbone": None}
            if family is tv.optical_flow:
                kw = {}
            model = build(name, **kw)
            if model is None and family is tv.video:
                model = tv.get_model(name, weights=None).eval()  # copies tensors while it builds
            if model is None:
                print(f"skip {name}: does not build on the meta device")
                continue
            # Detection models call torchvision's own operators (ops.torchvision.nms, ...),
            # which only torchvision's library registers: libtorch alone cannot load them, and
            # the policy refuses them by that namespace (the test checks it says so).
            prefix = "torchvision_ops/" if family is tv.detection else ""
            attempt(f"{prefix}{name}.script", lambda: torch.jit.script(model))
    # Traced, on the CPU.
    traced = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3",
              "maxvit_t", "mnasnet0_5", "mobilenet_v3_small", "regnet_y_400mf", "resnet18",
              "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t"]
    for name in traced:
        kw = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        model = tv.get_model(name, weights=None, **kw).eval()
        size = 224 if name == "maxvit_t" else 299 if name == "inception_v3" else 96
        attempt(f"{name}.trace", lambda: torch.jit.trace(model, torch.randn(1, 3, size, size)))
    # Quantized for real: packed parameters, torch.classes.quantized.
    # (Statically quantized models define __setstate__ in their code and stay refused: not here.)
    for name in []:
        model = tv.get_model(f"quantized_{name}", weights=None, quantize=True).eval()
        attempt(f"quantized_{name}.qscript", lambda: torch.jit.script(model))
        attempt(f"quantized_{name}.qtrace", lambda: torch.jit.trace(model, torch.randn(1, 3, 96, 96)))
    dynamic = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
        {torch.nn.Linear}, dtype=torch.qint8)
    attempt("dynamic_quantized_mlp.qscript", lambda: torch.jit.script(dynamic))

    # tests/py/architectures.py's models, as it saves them, and scripted or traced the other way.
    import architectures

    for name in architectures.MODELS:
        model = architectures.build(name)
        x = architectures.example_input(name)
        if name in architectures.TIED:
            attempt(f"arch_{name}.trace", lambda: torch.jit.trace(model, (x,), strict=False))
        else:
            attempt(f"arch_{name}.script", lambda: torch.jit.script(model))
            attempt(f"arch_{name}.trace", lambda: torch.jit.trace(model, (x,)))
    # tests/py/shrink_architectures.py's models.
    import shrink_architectures

    for name, model in shrink_architectures.models().items():
        attempt(f"shrink_{name}.script", lambda: torch.jit.script(model))

    # More Hugging Face models, traced as users export them (torchscript=True configurations).
    import transformers as T

    ids = torch.randint(0, 500, (2, 16))
    small = dict(vocab_size=500, torchscript=True)
    hf = {
        "hf_gpt2": (T.GPT2LMHeadModel, T.GPT2Config(n_positions=32, n_embd=32, n_layer=2, n_head=2, use_cache=False, bos_token_id=0, eos_token_id=0, **small)),
        "hf_bert": (T.BertForMaskedLM, T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=32, **small)),
        "hf_distilbert": (T.DistilBertForMaskedLM, T.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32, **small)),
        "hf_roberta": (T.RobertaForMaskedLM, T.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=40, **small)),
        "hf_llama": (T.LlamaForCausalLM, T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, max_position_embeddings=32, use_cache=False, **small)),
        "hf_t5": (T.T5EncoderModel, T.T5Config(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, **small)),
        "hf_opt": (T.OPTForCausalLM, T.OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=32, use_cache=False, **small)),
    }
    for name, (cls, config) in hf.items():
        torch.manual_seed(0)
        model = cls(config).eval()
        attempt(f"{name}.trace", lambda: torch.jit.trace(model, (ids,), strict=False))
    vit = T.ViTForImageClassification(T.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, torchscript=True)).eval()
    attempt("hf_vit.trace", lambda: torch.jit.trace(vit, (torch.randn(1, 3, 32, 32),), strict=False))

    # tests/py/formats: the TorchScript fixtures the format tests write.
    formats = os.path.join(TESTS_PY, "formats")
    folder = os.path.join(OUT, "formats")
    os.makedirs(folder, exist_ok=True)
    for script in sorted(os.listdir(formats)):
        if script.startswith("jit_") and script != "jit_reference.py":
            stem = script[:-3]
            # jit_standard_layers.py writes a folder of archives, the others one archive.
            args = [folder] if stem == "jit_standard_layers" else [
                os.path.join(folder, f"{stem}.pt"), os.path.join(folder, f"{stem}.ref.safetensors")]
            subprocess.run([sys.executable, os.path.join(formats, script), *args], check=True, cwd=formats,
                           env={**os.environ, "PYTHONPATH": formats}, stdout=subprocess.DEVNULL)
            print(f"formats/{stem}", flush=True)
    print("done")


main()
