//! Interop with PyTorch beyond the CLI: training a TorchScript model with the masks on and
//! exporting it, resuming pruning from a checkpoint PyTorch pruned, re-masking dense zeros.

use crate::common;

use common::{assert_same, Cli};
use std::collections::HashMap;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{read_state_dict, write_safetensors};
use tch_prune::model::{ModelFile, ScriptModel};
use tch_prune::{L1Unstructured, Pruner};

const MODELS: &str = r#"
import sys, torch, torch.nn as nn
import torch.nn.utils.prune as prune
from safetensors.torch import save_file
out = sys.argv[1]
def cnn():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6),
                      nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    m.train(); m(torch.randn(4, 3, 8, 8)); return m.eval()
torch.jit.save(torch.jit.script(cnn()), f"{out}/cnn.ts.pt")
# A checkpoint pruned in PyTorch, then what PyTorch gives when it resumes from it.
m = cnn()
prune.l1_unstructured(m[0], "weight", 0.3)
prune.ln_structured(m[3], "weight", 1, n=2, dim=0)
prune.random_unstructured(m[7], "bias", 2)
torch.save(m.state_dict(), f"{out}/pruned.sd.pt")
prune.l1_unstructured(m[0], "weight", 0.5)
prune.ln_structured(m[3], "weight", 2, n=1, dim=1)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{out}/resumed.safetensors")
"#;

fn fixtures() -> Option<tempfile::TempDir> {
    let dir = common::tempdir();
    common::run_python(MODELS, &[dir.path()])?;
    Some(dir)
}

#[test]
fn pruning_resumes_exactly_where_pytorch_left_it() {
    let Some(dir) = fixtures() else { return };
    let model = ModelFile::open(dir.path().join("pruned.sd.pt"), Device::Cpu).unwrap();
    let pruner = model.pruner().unwrap();
    assert_eq!(pruner.pruned_names(), ["0.weight", "3.weight", "7.bias"]);
    pruner.l1_unstructured("0.weight", 0.5, None).unwrap();
    pruner.ln_structured("3.weight", 2, 1.0, 1, None).unwrap();
    let expected: HashMap<String, Tensor> = read_state_dict(dir.path().join("resumed.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let ours: HashMap<String, Tensor> = model
        .reparametrized_state(&pruner)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(ours.len(), expected.len());
    for (name, t) in &expected {
        assert_same(&ours[name], t, name);
    }
}

#[test]
fn the_cli_resumes_a_pytorch_pruned_checkpoint_and_makes_it_permanent() {
    let Some(dir) = fixtures() else { return };
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"[{"params": "0.weight", "method": "l1-unstructured", "amount": 0.5},
            {"params": "3.weight", "method": "ln-structured", "amount": 2, "n": 1, "dim": 1}]"#,
    )
    .unwrap();
    let out = dir.path().join("out.pt");
    let run = Cli::new("prune")
        .arg("--plan")
        .args([&plan, &dir.path().join("pruned.sd.pt"), &"-o".into(), &out])
        .run();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.starts_with("pruned 3 tensors"), "{stdout}");
    // PyTorch's resumed model, made permanent: `_orig * _mask` under the plain names.
    let expected: HashMap<String, Tensor> = read_state_dict(dir.path().join("resumed.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let written = read_state_dict(&out).unwrap();
    assert_eq!(written.len(), expected.len() - 3);
    for (name, t) in &written {
        let want = match expected.get(&format!("{name}_orig")) {
            Some(orig) => orig * &expected[&format!("{name}_mask")],
            None => expected[name].shallow_clone(),
        };
        assert_same(t, &want, name);
    }
}

#[test]
fn load_state_dict_reparametrizes_a_store_from_pytorchs_pruned_checkpoint() {
    let Some(dir) = fixtures() else { return };
    let dense = ModelFile::open(dir.path().join("cnn.ts.pt"), Device::Cpu).unwrap();
    let pruner = Pruner::new(dense.var_store());
    let state: Vec<(String, Tensor)> = read_state_dict(dir.path().join("pruned.sd.pt"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| !n.contains("running_") && !n.contains("num_batches"))
        .collect();
    let before: Vec<String> = pruner.pruned_names();
    // Strict: an entry the model lacks is refused, and nothing changes.
    let mut extra = state
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect::<Vec<_>>();
    extra.push((
        "9.weight".into(),
        Tensor::ones([1], (Kind::Float, Device::Cpu)),
    ));
    assert!(pruner.load_state_dict(&extra).is_err());
    assert_eq!(pruner.pruned_names(), before);
    pruner.load_state_dict(&state).unwrap();
    let expected: HashMap<String, Tensor> = state.into_iter().collect();
    for name in ["0.weight", "3.weight", "7.bias"] {
        assert_same(
            &pruner.mask(name).unwrap(),
            &expected[&format!("{name}_mask")],
            name,
        );
        assert_same(
            &pruner.orig(name).unwrap(),
            &expected[&format!("{name}_orig")],
            name,
        );
    }
}

#[test]
fn torchscript_trains_with_masks_and_exports_what_pytorch_loads() {
    let Some(dir) = fixtures() else { return };
    let mut model = ScriptModel::load(dir.path().join("cnn.ts.pt"), Device::Cpu).unwrap();
    assert_eq!(
        model.parameter_names()[..3],
        ["0.weight", "0.bias", "1.weight"]
    );
    let vs = model.var_store();
    let mut opt = nn::Sgd::default().build(vs, 0.05).unwrap();
    let pruner = Pruner::new(vs);
    let names = ["0.weight", "3.weight", "7.weight"];
    pruner
        .global_unstructured(&names, &L1Unstructured::new(0.5).unwrap(), &HashMap::new())
        .unwrap();
    let origs: Vec<Tensor> = names
        .iter()
        .map(|n| pruner.orig(n).unwrap().copy())
        .collect();
    let _generator = common::generator();
    tch::manual_seed(0);
    let x = Tensor::randn([16, 3, 8, 8], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(5, [16], (Kind::Int64, Device::Cpu));
    model.set_train(true).unwrap();
    let mut losses = vec![];
    for _ in 0..15 {
        let loss = pruner
            .forward(|| model.forward(&x))
            .unwrap()
            .unwrap()
            .cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    assert!(losses[14] < losses[0], "{losses:?}");
    for (name, before) in names.iter().zip(origs) {
        let pruned = pruner.mask(name).unwrap().eq(0);
        assert_same(
            &pruner.orig(name).unwrap().masked_select(&pruned),
            &before.masked_select(&pruned),
            name,
        );
    }
    let masks: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| (n.to_string(), pruner.mask(n).unwrap()))
        .collect();
    pruner.remove_all().unwrap();
    model.set_train(false).unwrap();
    let out_path = dir.path().join("trained.ts.pt");
    model.save(&out_path).unwrap();
    let y_rust = tch::no_grad(|| model.forward(&x)).unwrap();
    let check_path = dir.path().join("check.safetensors");
    let mut check = vec![
        ("x".to_string(), x.shallow_clone()),
        ("y".to_string(), y_rust),
    ];
    check.extend(masks.into_iter().map(|(n, m)| (format!("mask.{n}"), m)));
    write_safetensors(&check_path, &check).unwrap();
    let verdict = common::run_python(
        r#"
import sys, torch
from safetensors.torch import load_file
m = torch.jit.load(sys.argv[1]); orig = torch.jit.load(sys.argv[2]); c = load_file(sys.argv[3])
assert m.code == orig.code and list(m.state_dict()) == list(orig.state_dict())
sd = m.state_dict()
for k, v in c.items():
    if k.startswith("mask."):
        assert torch.equal(sd[k[5:]][v == 0], torch.zeros_like(sd[k[5:]][v == 0])), k
m.eval()
with torch.no_grad():
    assert torch.equal(m(c["x"]), c["y"]), "outputs differ"
print("OK")
"#,
        &[&out_path, &dir.path().join("cnn.ts.pt"), &check_path],
    )
    .unwrap();
    assert_eq!(verdict.trim(), "OK");
}

#[test]
fn a_dense_checkpoint_is_re_masked_from_its_zeros() {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = Tensor::from_slice(&[0f32, 1., -0.0, 2., 0., 3.]).view([2, 3]);
    let _ = vs.root().var_copy("w", &w);
    let pruner = Pruner::new(&vs);
    pruner.mask_from_zeros("w").unwrap();
    assert_same(
        &pruner.mask("w").unwrap(),
        &Tensor::from_slice(&[0f32, 1., 0., 1., 0., 1.]).view([2, 3]),
        "mask",
    );
    // Training keeps them at zero.
    let mut opt = nn::Sgd::default().build(&vs, 0.5).unwrap();
    let loss = pruner
        .forward(|| (pruner.tensor("w").unwrap() * 3.0).sum(Kind::Float))
        .unwrap();
    opt.backward_step(&loss);
    tch::no_grad(|| pruner.apply_masks()).unwrap();
    let t = pruner.tensor("w").unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&t.view([-1])).unwrap(),
        [0., -0.5, 0., 0.5, 0., 1.5]
    );
}
