//! The parity cases: generated cases pruned here and by `torch.nn.utils.prune` (the provisioned
//! torch 2.13, tests/py/parity.py), on one device; masks and pruned values must agree bit for
//! bit (-0.0 counted as 0.0), dtypes included. Run on the CPU by
//! tests/pruning/parity_pytorch.rs, on CUDA by tests/cuda.rs.

use super::{assert_bits, assert_same, run_python};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tch_prune::*;

const PYTHON: &str = include_str!("../py/parity.py");

/// A case: tensors (ids) and a list of steps, each a JSON object the Python side reads.
struct Case {
    tensors: Vec<(String, Tensor)>,
    steps: Vec<Value>,
    /// Importance scores per (tensor id, step index).
    scores: Vec<(String, usize, Tensor)>,
}

fn amount_json(a: Amount) -> Value {
    match a {
        Amount::Count(n) => json!(n),
        Amount::Fraction(f) => json!(f),
    }
}

fn norm_json(n: Norm) -> Value {
    match n {
        Norm::P(p) if p.is_infinite() => json!(if p > 0.0 { "inf" } else { "-inf" }),
        Norm::P(p) => json!(p),
        Norm::Fro => json!("fro"),
        Norm::Nuc => json!("nuc"),
    }
}

fn randn(shape: &[i64], kind: Kind) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind)
}

/// Applies one step of a case through the crate; with `permanent`, through the calls that
/// make the pruning permanent at once (PyTorch's step followed by `prune.remove`).
fn apply(pruner: &Pruner, case: &Case, i: usize, step: &Value, permanent: bool, device: Device) {
    let amount = match &step["amount"] {
        Value::Number(n) if n.is_i64() => Amount::Count(n.as_i64().unwrap()),
        Value::Number(n) => Amount::Fraction(n.as_f64().unwrap()),
        _ => Amount::Count(0),
    };
    if let Some(seed) = step.get("seed") {
        tch::manual_seed(seed.as_i64().unwrap());
    }
    let scores: HashMap<String, Tensor> = case
        .scores
        .iter()
        .filter(|(_, s, _)| *s == i)
        .map(|(n, _, t)| (format!("{n}.weight"), t.to_device(device)))
        .collect();
    let name = format!("{}.weight", case.tensors[0].0);
    let n = || -> Norm {
        match &step["n"] {
            Value::String(s) => s.parse().unwrap(),
            v => Norm::P(v.as_f64().unwrap()),
        }
    };
    let dim = || step["dim"].as_i64().unwrap();
    let kind = step["method"].as_str().unwrap();
    let method: Box<dyn PruningMethod> = match kind {
        "l1" | "global_l1" => Box::new(L1Unstructured::new(amount).unwrap()),
        "random" | "global_random" => Box::new(RandomUnstructured::new(amount).unwrap()),
        "ln" => Box::new(LnStructured::new(amount, n(), dim()).unwrap()),
        "random_structured" => Box::new(RandomStructured::new(amount, dim()).unwrap()),
        "identity" => Box::new(Identity),
        other => panic!("unknown method {other}"),
    };
    let result = if kind.starts_with("global") {
        let names: Vec<String> = case
            .tensors
            .iter()
            .map(|(n, _)| format!("{n}.weight"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        match permanent {
            true => pruner.global_unstructured_and_remove(&names, method.as_ref(), &scores),
            false => pruner.global_unstructured(&names, method.as_ref(), &scores),
        }
    } else {
        let s = scores.get(&name);
        match permanent {
            true => pruner.prune_and_remove(&name, method.as_ref(), s),
            false => pruner.prune(&name, method.as_ref(), s),
        }
    };
    result.unwrap_or_else(|e| panic!("step {i} {step}: {e}"));
}

fn step(method: &str, amount: impl Into<Amount>) -> Value {
    json!({"method": method, "amount": amount_json(amount.into())})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

/// Every generated case. Shapes, amounts (counts, fractions, .5 rounding cases), norms and
/// dims vary; chains mix methods; random steps are seeded.
fn cases() -> Vec<Case> {
    tch::manual_seed(1234);
    let mut cases = Vec::new();
    let mut single = |shape: &[i64], kind: Kind, steps: Vec<Value>, scored: &[usize]| {
        let id = format!("c{}", cases.len());
        let t = randn(shape, kind);
        let scores = scored
            .iter()
            .map(|&i| (id.clone(), i, randn(shape, kind)))
            .collect();
        cases.push(Case {
            tensors: vec![(id, t)],
            steps,
            scores,
        });
    };
    let f = Kind::Float;
    // Unstructured magnitudes: fractions with .5 products (0.5 x 5 = 2.5 -> 2), counts, edges.
    for (shape, amount) in [
        (vec![5], Amount::Fraction(0.5)),
        (vec![3], Amount::Fraction(0.5)),
        (vec![1, 5], Amount::Fraction(0.3)),
        (vec![2, 5], Amount::Fraction(0.45)),
        (vec![5, 5], Amount::Fraction(0.1)),
        (vec![7, 3], Amount::Count(5)),
        (vec![4, 6], Amount::Count(24)),
        (vec![4, 6], Amount::Fraction(1.0)),
        (vec![4, 6], Amount::Count(0)),
        (vec![3, 4, 5], Amount::Fraction(0.625)),
        (vec![8, 3, 3, 3], Amount::Fraction(0.7)),
    ] {
        single(&shape, f, vec![step("l1", amount)], &[]);
    }
    single(&[6, 7], Kind::Double, vec![step("l1", 0.35)], &[]);
    single(&[6, 7], Kind::Half, vec![step("l1", 0.35)], &[]);
    single(&[6, 7], Kind::BFloat16, vec![step("l1", 11)], &[]);
    single(&[6, 7], f, vec![step("l1", 0.4)], &[0]);
    // Structured: norms (incl. 0, negative, fractional, +-inf, fro, nuc) and dims (incl. negative).
    for (shape, n, dim, amount) in [
        (vec![6, 4], Norm::P(1.0), 0, Amount::Fraction(0.5)),
        (vec![6, 4], Norm::P(2.0), 1, Amount::Count(1)),
        (vec![6, 4], Norm::P(2.0), -1, Amount::Fraction(0.5)),
        (vec![6, 4, 3], Norm::P(3.0), 2, Amount::Count(2)),
        (vec![6, 4, 3], Norm::P(0.5), 1, Amount::Fraction(0.25)),
        (vec![6, 4, 3], Norm::P(-1.0), 0, Amount::Fraction(0.3)),
        (vec![6, 4, 3], Norm::P(f64::INFINITY), 0, Amount::Count(3)),
        (
            vec![6, 4, 3],
            Norm::P(f64::NEG_INFINITY),
            -2,
            Amount::Count(3),
        ),
        (vec![6, 4, 3], Norm::Fro, 0, Amount::Fraction(0.5)),
        (vec![6, 4, 3], Norm::Nuc, 0, Amount::Fraction(0.5)),
        (vec![5, 3, 2, 2], Norm::P(1.0), 0, Amount::Fraction(0.6)),
        (vec![5, 3, 2, 2], Norm::P(2.0), 1, Amount::Fraction(1.0)),
    ] {
        let s = with(
            with(step("ln", amount), "n", norm_json(n)),
            "dim",
            json!(dim),
        );
        single(&shape, f, vec![s], &[]);
    }
    // Norm 0 counts non-zeros: make zeros so the ranking is meaningful (ties resolved by topk).
    let s = with(with(step("ln", 2), "n", json!(0.0)), "dim", json!(0));
    single(&[5, 8], f, vec![s], &[]);
    let s = with(with(step("ln", 0.5), "n", json!(2.0)), "dim", json!(1));
    single(&[4, 6], Kind::Double, vec![s.clone()], &[0]);
    single(&[4, 6], f, vec![s], &[0]);
    // Seeded random methods, unstructured and structured.
    for (shape, kind, amount, seed) in [
        (vec![3, 4], f, Amount::Count(5), 42),
        (vec![10, 10], f, Amount::Fraction(0.3), 7),
        (vec![10, 10], Kind::Double, Amount::Fraction(0.5), 8),
        (vec![4, 3, 3], f, Amount::Count(35), 0),
    ] {
        single(
            &shape,
            kind,
            vec![with(step("random", amount), "seed", json!(seed))],
            &[],
        );
    }
    for (shape, dim, amount, seed) in [
        (vec![3, 4], 1, Amount::Count(2), 42),
        (vec![8, 4, 3], 0, Amount::Fraction(0.5), 5),
        (vec![8, 4, 3], -1, Amount::Count(1), 6),
    ] {
        let s = with(
            with(step("random_structured", amount), "dim", json!(dim)),
            "seed",
            json!(seed),
        );
        single(&shape, f, vec![s], &[]);
    }
    // Iterative chains mixing methods: amounts are relative to what remains.
    let ln = |amount: Amount, n: f64, dim: i64| {
        with(
            with(step("ln", amount), "n", norm_json(Norm::P(n))),
            "dim",
            json!(dim),
        )
    };
    single(
        &[6],
        f,
        vec![step("l1", 2), step("l1", 0.5), step("random", 1.0)],
        &[],
    );
    single(
        &[6, 8],
        f,
        vec![
            step("l1", 0.3),
            ln(Amount::Fraction(0.5), 2.0, 0),
            step("l1", 0.5),
        ],
        &[],
    );
    single(
        &[2, 3, 4],
        f,
        vec![
            ln(Amount::Count(1), 1.0, 1),
            ln(Amount::Count(2), 2.0, -1),
            step("l1", 3),
        ],
        &[],
    );
    single(
        &[6, 8],
        f,
        vec![
            step("identity", 0),
            with(step("random", 0.25), "seed", json!(3)),
            with(
                with(step("random_structured", 0.5), "dim", json!(1)),
                "seed",
                json!(4),
            ),
            ln(Amount::Fraction(0.5), f64::INFINITY, 0),
        ],
        &[],
    );
    single(
        &[6, 8],
        f,
        vec![step("l1", 10), step("l1", 10), ln(Amount::Count(1), 2.0, 0)],
        &[1, 2],
    );
    single(
        &[5, 6],
        Kind::Double,
        vec![ln(Amount::Count(2), 2.0, 1), step("l1", 0.5)],
        &[1],
    );
    // Global pruning across tensors of several shapes, with scores, chains and seeds.
    let mut global = |shapes: &[&[i64]], steps: Vec<Value>, scored: &[(usize, usize)]| {
        let base = cases.len();
        let tensors: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(j, s)| (format!("g{base}_{j}"), randn(s, Kind::Float)))
            .collect();
        let scores = scored
            .iter()
            .map(|&(j, i)| {
                (
                    tensors[j].0.clone(),
                    i,
                    randn(&tensors[j].1.size(), Kind::Float),
                )
            })
            .collect();
        cases.push(Case {
            tensors,
            steps,
            scores,
        });
    };
    global(
        &[&[4, 5], &[3], &[2, 3, 2]],
        vec![step("global_l1", 0.5)],
        &[],
    );
    global(
        &[&[4, 5], &[3], &[2, 3, 2]],
        vec![step("global_l1", 13)],
        &[(1, 0)],
    );
    global(
        &[&[4, 5], &[7, 2]],
        vec![step("global_l1", 0.3), step("global_l1", 0.5)],
        &[],
    );
    global(
        &[&[6, 5], &[7, 2]],
        vec![step("global_l1", 0.2), step("global_l1", 0.25)],
        &[(0, 1)],
    );
    global(
        &[&[4, 5], &[7, 2]],
        vec![with(step("global_random", 0.4), "seed", json!(11))],
        &[],
    );
    cases
}

/// Runs every case on `device`, here and in PyTorch (on the same device), and checks masks and
/// pruned values bit for bit (-0.0 counted as 0.0), then with each case's last step made
/// permanent at once. Returns the number of cases, or None (said) without Python's torch.
pub fn check_against_pytorch(device: Device) -> Option<usize> {
    let cases = cases();
    let dir = super::tempdir();
    let (spec_path, in_path, out_path) = (
        dir.path().join("cases.json"),
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    let spec: Vec<Value> = cases
        .iter()
        .map(|c| json!({"tensors": c.tensors.iter().map(|(n, _)| n).collect::<Vec<_>>(), "steps": c.steps}))
        .collect();
    std::fs::write(&spec_path, serde_json::to_string(&spec).unwrap()).unwrap();
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for c in &cases {
        inputs.extend(
            c.tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone())),
        );
        inputs.extend(
            c.scores
                .iter()
                .map(|(n, i, t)| (format!("{n}.scores{i}"), t.shallow_clone())),
        );
    }
    Tensor::write_safetensors(&inputs, &in_path).unwrap();
    let device_name = match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    };
    run_python(
        PYTHON,
        &[&spec_path, &in_path, &out_path, Path::new(&device_name)],
    )?;
    let expected: HashMap<String, Tensor> = Tensor::read_safetensors(&out_path)
        .unwrap()
        .into_iter()
        .collect();

    for case in &cases {
        let vs = VarStore::new(device);
        for (name, t) in &case.tensors {
            let _ = (vs.root() / name.as_str()).add("weight", t.copy().to_device(device), true);
        }
        let pruner = Pruner::new(&vs);
        for (i, s) in case.steps.iter().enumerate() {
            apply(&pruner, case, i, s, false, device);
        }
        for (name, _) in &case.tensors {
            let what = format!("{name} {:?}", case.steps);
            let full = format!("{name}.weight");
            assert_same(
                &pruner.mask(&full).unwrap(),
                &expected[&format!("{name}.mask")],
                &format!("mask of {what}"),
            );
            assert_same(
                &pruner.tensor(&full).unwrap(),
                &expected[&format!("{name}.pruned")],
                &format!("pruned {what}"),
            );
            assert_same(
                &vs.variables()[&mask_name(&full)],
                &expected[&format!("{name}.mask")],
                "mask in the store",
            );
        }
    }

    // The same with the last step made permanent at once: the weights PyTorch has after
    // `prune.remove`, and nothing of the reparametrization left.
    for case in &cases {
        let vs = VarStore::new(device);
        for (name, t) in &case.tensors {
            let _ = (vs.root() / name.as_str()).add("weight", t.copy().to_device(device), true);
        }
        let pruner = Pruner::new(&vs);
        let last = case.steps.len() - 1;
        for (i, s) in case.steps.iter().enumerate() {
            apply(&pruner, case, i, s, i == last, device);
        }
        let vars = vs.variables();
        for (name, _) in &case.tensors {
            let full = format!("{name}.weight");
            assert!(!pruner.is_pruned(&full) && !vars.contains_key(&mask_name(&full)));
            // Bit for bit: the signs of pruned zeros are PyTorch's too.
            assert_bits(
                &vars[&full],
                &expected[&format!("{name}.pruned")],
                &format!("{name} {:?} made permanent at once", case.steps),
            );
        }
    }
    Some(cases.len())
}
