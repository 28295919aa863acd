//! Training-time pruning against the real PyTorch (`torch.ao.pruning`, 2.13): the cubic
//! schedule against `CubicSL`, N:M masks against `WeightNormSparsifier`, and the CLI's
//! `--method nm` output checked by PyTorch. These tests need TCH_PRUNE_PYTHON (set by
//! `make test`) and fail without it: they exist to compare.

use crate::common;
use common::Cli;

use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};
use tch_prune::checkpoint::read_safetensors;
use tch_prune::train::{CubicSchedule, NmSparsity, SparsitySchedule};
use tch_prune::PruningMethod;

fn python(script: &str, args: &[&Path]) -> String {
    common::run_python(script, args)
        .expect("these tests compare with PyTorch: set TCH_PRUNE_PYTHON (make test does)")
}

/// (final, initial, init_t, delta_t, total_t, initially_zero, steps to run).
const CUBIC_CASES: [(f64, f64, i64, i64, i64, bool, i64); 7] = [
    (0.9, 0.0, 0, 10, 10, false, 130),
    (0.5, 0.0, 0, 100, 1, false, 120),
    (0.95, 0.1, 5, 3, 17, false, 80),
    (0.8, 0.2, 7, 1, 50, true, 70),
    (0.97, 0.05, 0, 7, 13, false, 100),
    (0.3, 0.3, 2, 2, 2, true, 10),
    (0.875, 0.0, 30, 1, 1, false, 40),
];

/// CubicSL's sparsity at t = 0 (after construction, which steps once) and after each
/// `scheduler.step()`, as the bits of Python's doubles.
const CUBIC_SL: &str = r#"
import json, struct, sys, warnings
import torch
from torch.ao.pruning import WeightNormSparsifier
from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL
warnings.simplefilter("ignore")
bits = lambda x: struct.unpack("<q", struct.pack("<d", float(x)))[0]
out = []
for s_f, s_0, t_0, dt, n, zero, steps in json.load(open(sys.argv[1])):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    sparsifier = WeightNormSparsifier(sparsity_level=s_f)
    sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}])
    scheduler = CubicSL(sparsifier, init_sl=s_0, init_t=t_0, delta_t=dt, total_t=n, initially_zero=zero)
    values = [bits(scheduler.get_last_sl()[0])]
    for _ in range(steps):
        sparsifier.step()
        scheduler.step()
        values.append(bits(scheduler.get_last_sl()[0]))
    out.append(values)
print(json.dumps(out))
"#;

#[test]
fn cubic_schedule_equals_cubic_sl_bit_for_bit() {
    let cases: Vec<serde_json::Value> = CUBIC_CASES
        .iter()
        .map(|c| serde_json::json!([c.0, c.1, c.2, c.3, c.4, c.5, c.6]))
        .collect();
    let dir = common::tempdir();
    let arg = dir.path().join("cases.json");
    std::fs::write(&arg, serde_json::to_string(&cases).unwrap()).unwrap();
    let out = python(CUBIC_SL, &[&arg]);
    let expected: Vec<Vec<i64>> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(expected.len(), CUBIC_CASES.len());
    let mut compared = 0;
    for (&(s_f, s_0, t_0, dt, n, zero, steps), values) in CUBIC_CASES.iter().zip(&expected) {
        let schedule = CubicSchedule::new(s_f, t_0, dt, n)
            .unwrap()
            .initial(s_0)
            .unwrap()
            .initially_zero(zero);
        assert_eq!(values.len() as i64, steps + 1);
        for (t, &bits) in values.iter().enumerate() {
            let ours = schedule.sparsity_at(t as i64);
            assert_eq!(
                ours.to_bits() as i64,
                bits,
                "{schedule:?} at step {t}: ours {ours}, CubicSL {}",
                f64::from_bits(bits as u64)
            );
            compared += 1;
        }
    }
    assert!(compared > 500);
}

/// Weights (random and tie-heavy), ao's masks for each pattern, the scores ao ranks by, and a
/// reference of the crate's tie rule (a stable sort of |w| per block, earlier ties pruned).
const NM_REFERENCE: &str = r#"
import sys, torch
from safetensors.torch import save_file
from torch.ao.pruning import WeightNormSparsifier
out = {}
shapes = [(8, 16), (5, 12), (3, 10), (16, 64), (4, 7)]
dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
for pattern in [(2, 4), (1, 4), (4, 8)]:
    n, m = pattern
    for dname, dtype in dtypes.items():
        for kind in ["random", "ties"]:
            for si, shape in enumerate(shapes):
                for norm in [1, 2]:
                    g = torch.Generator().manual_seed(1000 * si + 10 * n + m)
                    if kind == "random":
                        w = torch.randn(shape, generator=g)
                    else:
                        w = torch.randint(-2, 3, shape, generator=g).float() * 0.5
                    w = w.to(dtype)
                    lin = torch.nn.Linear(shape[1], shape[0]).to(dtype)
                    with torch.no_grad():
                        lin.weight.copy_(w)
                    model = torch.nn.Sequential(lin)
                    s = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, m), zeros_per_block=m - n, norm=norm)
                    s.prepare(model, config=[{"tensor_fqn": "0.weight"}])
                    s.step()
                    mask = model[0].parametrizations.weight[0].mask[:, : shape[1]]
                    scores = w.abs() if norm == 1 else w * w
                    # The crate's rule: pad with NaN (ranked last), stable ascending sort.
                    pad = (m - shape[1] % m) % m
                    mag = torch.cat([w.abs(), torch.full((shape[0], pad), float("nan"), dtype=dtype)], 1)
                    order = torch.sort(mag.reshape(-1, m), dim=1, stable=True).indices[:, : m - n]
                    rule = torch.ones(mag.reshape(-1, m).shape, dtype=torch.bool).scatter_(1, order, False)
                    rule = rule.reshape(mag.shape)[:, : shape[1]]
                    key = f"{n}:{m}/{dname}/{kind}/{si}/L{norm}"
                    out[key + "/w"] = w.contiguous()
                    out[key + "/ao"] = mask.to(torch.uint8).contiguous()
                    out[key + "/scores"] = scores.contiguous()
                    out[key + "/rule"] = rule.to(torch.uint8).contiguous()
save_file(out, sys.argv[1])
"#;

#[test]
fn nm_masks_equal_weight_norm_sparsifier() {
    let dir = common::tempdir();
    let path = dir.path().join("nm.safetensors");
    python(NM_REFERENCE, &[&path]);
    let tensors: HashMap<String, Tensor> = read_safetensors(&path).unwrap().into_iter().collect();
    let mut keys: Vec<&String> = tensors.keys().filter(|k| k.ends_with("/w")).collect();
    keys.sort();
    assert_eq!(keys.len(), 3 * 3 * 2 * 5 * 2);
    let (mut cases, mut tied_blocks, mut exact_random_f32) = (0, 0, 0);
    for key in keys {
        let base = key.trim_end_matches("/w");
        let get = |s: &str| tensors[&format!("{base}/{s}")].shallow_clone();
        let (w, ao, scores, rule) = (get("w"), get("ao"), get("scores"), get("rule"));
        let pattern: NmSparsity = base.split('/').next().unwrap().parse().unwrap();
        let (n, m) = pattern.pattern();
        let ours = pattern
            .compute_mask(&w, &Tensor::ones_like(&w))
            .unwrap()
            .ne(0)
            .to_kind(Kind::Uint8);
        assert_eq!(ours.kind(), Kind::Uint8);
        // The documented tie rule, exactly.
        assert!(
            ours.equal(&rule),
            "{base}: not the tie rule\nours {ours}\nrule {rule}"
        );
        // ao's masks, up to the choice among scores tied at a block's boundary: every block
        // keeps the same multiset of ao's scores.
        let cols = w.size()[1];
        let pad = (m - cols % m) % m;
        let blocks = |t: &Tensor, fill: f64| {
            let t = t.to_kind(Kind::Double);
            let filler = Tensor::full([t.size()[0], pad], fill, (Kind::Double, t.device()));
            let padded = Tensor::cat(&[t, filler], 1);
            padded.reshape([-1, m])
        };
        let s = blocks(&scores, f64::NAN);
        let kept = |mask: &Tensor| {
            let keep = blocks(mask, 1.0).ne(0);
            // Pruned scores as -1 (below every score), then sorted: the kept multiset.
            s.where_self(&keep, &Tensor::from(-1.0)).sort(1, false).0
        };
        let (ours_kept, ao_kept) = (kept(&ours), kept(&ao));
        let same = ours_kept
            .isclose(&ao_kept, 0.0, 0.0, true)
            .all_dim(1, false);
        let differing = same.logical_not().sum(Kind::Int64).int64_value(&[]);
        if differing > 0 {
            panic!("{base}: {differing} blocks keep other scores than ao\nours {ours}\nao {ao}");
        }
        let equal = ours.equal(&ao);
        if !equal {
            tied_blocks += blocks(&ours, 1.0)
                .ne_tensor(&blocks(&ao, 1.0))
                .any_dim(1, false)
                .sum(Kind::Int64)
                .int64_value(&[]);
        }
        if base.contains("/f32/random/") {
            assert!(
                equal,
                "{base}: random f32 weights have no ties, masks must be identical"
            );
            exact_random_f32 += 1;
        }
        // N:M holds: at most n entries kept in every full block.
        let full = cols / m * m;
        let per_block =
            ours.narrow(1, 0, full)
                .reshape([-1, m])
                .sum_dim_intlist(1, false, Kind::Int64);
        assert!(per_block.le(n).all().int64_value(&[]) == 1, "{base}");
        cases += 1;
    }
    assert_eq!(cases, 180);
    assert_eq!(exact_random_f32, 30);
    // The tie-heavy inputs must have exercised the tie rule somewhere.
    eprintln!("{tied_blocks} blocks differ from ao among tied scores only");
}

/// The CLI's `--method nm --pattern 2:4` output, checked by PyTorch: 2-D weights against
/// WeightNormSparsifier, convolution weights against it on the weight laid out as
/// [out * kh * kw, in] (blocks along the input channels), everything else untouched.
const NM_CLI_MODEL: &str = r#"
import sys, torch
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
    torch.nn.Linear(16 * 4 * 4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 12),
)
torch.jit.save(torch.jit.script(model), sys.argv[1])
"#;

const NM_CLI_CHECK: &str = r#"
import sys, torch
from torch.ao.pruning import WeightNormSparsifier
n, m = 2, 4
before = torch.jit.load(sys.argv[1]).state_dict()
after = torch.jit.load(sys.argv[2]).state_dict()
def ao_mask(w2d):
    lin = torch.nn.Linear(w2d.shape[1], w2d.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w2d)
    model = torch.nn.Sequential(lin)
    s = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, m), zeros_per_block=m - n)
    s.prepare(model, config=[{"tensor_fqn": "0.weight"}])
    s.step()
    return model[0].parametrizations.weight[0].mask[:, : w2d.shape[1]]
checked = 0
for name, w in before.items():
    if name.endswith("weight") and w.dim() == 2:
        expected = w * ao_mask(w)
    elif name.endswith("weight") and w.dim() == 4:
        o, i, kh, kw = w.shape
        laid = w.permute(0, 2, 3, 1).reshape(-1, i)
        mask = ao_mask(laid).reshape(o, kh, kw, i).permute(0, 3, 1, 2)
        expected = w * mask
    else:
        expected = w
    assert torch.equal(after[name], expected), name
    if name.endswith("weight"):
        nz = (after[name] != 0).sum().item()
        assert nz == w.numel() // 2, (name, nz)
    checked += 1
print(checked)
"#;

#[test]
fn cli_nm_output_is_what_weight_norm_sparsifier_gives() {
    let dir = common::tempdir();
    let (input, output) = (dir.path().join("m.pt"), dir.path().join("out.pt"));
    python(NM_CLI_MODEL, &[&input]);
    let run = Cli::prune(&input, &output)
        .flags("--method nm --pattern 2:4")
        .run();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let checked = python(NM_CLI_CHECK, &[&input, &output]);
    assert_eq!(checked.trim(), "6", "every tensor of the model compared");

    // The refusals, one line each, no output written.
    let refused = dir.path().join("refused.pt");
    for args in [
        &["--method", "nm"][..],
        &["--method", "nm", "--pattern", "4:4"],
        &["--method", "nm", "--pattern", "2:4", "--amount", "0.5"],
        &["--method", "nm", "--pattern", "2:4", "--global"],
        &[
            "--method",
            "l1-unstructured",
            "--amount",
            "0.5",
            "--pattern",
            "2:4",
        ],
    ] {
        let run = Cli::prune(&input, &refused).args(args).run();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!refused.exists(), "{args:?}");
    }
}
