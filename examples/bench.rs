//! The crate's side of `make bench` (scripts/bench.py drives it; scripts/bench_torch.py is
//! PyTorch's side). One measurement per process, so that each peak resident set size is its own:
//!
//!   bench <case> <d> <blocks> <seed> <out-dir>   one JSON line: time, peak memory, mask file
//!   bench checksum <d> <blocks> <seed>           the bit sum of every tensor, to check that
//!                                                PyTorch builds the very same weights
//!
//! Cases: l1, ln, global, bool-global, l1-at-once, ln-at-once, global-at-once, forward, train
//! (see scripts/bench.py).
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::time::Instant;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::{L1Unstructured, LnStructured, Pruner};

/// A transformer block's Linear layers as (name, out = factor·d, in = factor·d); ReLU after ff1.
const BLOCK: [(&str, i64, i64); 6] = [
    ("q", 1, 1),
    ("k", 1, 1),
    ("v", 1, 1),
    ("o", 1, 1),
    ("ff1", 4, 1),
    ("ff2", 1, 4),
];

struct Linear {
    name: String,
    weight: Tensor,
    bias: Tensor,
    relu: bool,
}

/// The model, drawn from the seeded CPU generator in the same order as bench_torch.py (each
/// layer's weight, then its bias), so both sides hold bit-identical weights. Layers are named
/// `layer007_k` so that sorted names (a safetensors file's order) are the model's order.
fn build(vs: &nn::VarStore, d: i64, blocks: i64, seed: i64) -> Vec<Linear> {
    tch::manual_seed(seed);
    let mut layers = Vec::new();
    for b in 0..blocks {
        for (j, (kind, out, inp)) in BLOCK.iter().enumerate() {
            let (out, inp) = (out * d, inp * d);
            let name = format!("layer{:03}_{kind}", b * 6 + j as i64);
            let mut w = Tensor::randn([out, inp], (Kind::Float, Device::Cpu));
            let _ = w.g_mul_scalar_(1.0 / (inp as f64).sqrt());
            let mut bias = Tensor::randn([out], (Kind::Float, Device::Cpu));
            let _ = bias.g_mul_scalar_(0.02);
            // `add` registers the tensor itself (no copy), so building never holds two models.
            let p = vs.root() / name.as_str();
            let weight = p.add("weight", w, true);
            let bias = p.add("bias", bias, true);
            layers.push(Linear {
                name: format!("{name}.weight"),
                weight,
                bias,
                relu: *kind == "ff1",
            });
        }
    }
    layers
}

/// x @ W.T + b through the whole stack, with a ReLU after each ff1.
fn forward(layers: &[Linear], x: &Tensor) -> Tensor {
    layers.iter().fold(x.shallow_clone(), |h, l| {
        let y = h.linear(&l.weight, Some(&l.bias));
        if l.relu {
            y.relu()
        } else {
            y
        }
    })
}

/// A value of /proc/self/status in bytes (VmRSS, VmHWM).
fn status_bytes(field: &str) -> Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kb: i64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches(" kB")
        .parse()?;
    Ok(kb * 1024)
}

/// Resets the kernel's peak-RSS mark (VmHWM) to the current RSS, so the peak read later is the
/// peak of what follows, not of building the model. Returns that baseline RSS.
fn reset_peak() -> Result<i64> {
    // "5" resets VmHWM (Linux >= 4.0); without it the peak would include model building.
    std::fs::write("/proc/self/clear_refs", "5").context("cannot reset VmHWM")?;
    status_bytes("VmRSS:")
}

fn median(runs: &[f64]) -> f64 {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Times `f` `repeats` times after a warm-up; the seconds of each run.
fn timings(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    let mut runs = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        runs.push(start.elapsed().as_secs_f64());
    }
    Ok(runs)
}

/// Writes the masks, in layer order, as packed bits (1 = kept, first entry in the high bit, each
/// tensor padded to a whole byte): numpy.packbits' format, which bench_torch.py writes too.
fn write_bits(path: &std::path::Path, masks: &[Tensor]) -> Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let weights = Tensor::from_slice(&[128u8, 64, 32, 16, 8, 4, 2, 1]);
    for mask in masks {
        let mut bits = mask.ne(0).to_kind(Kind::Uint8).reshape([-1]);
        let pad = (8 - bits.numel() as i64 % 8) % 8;
        if pad > 0 {
            bits = Tensor::cat(&[bits, Tensor::zeros([pad], (Kind::Uint8, Device::Cpu))], 0);
        }
        let packed = (bits.view([-1, 8]) * &weights).sum_dim_intlist(1, false, Kind::Uint8);
        file.write_all(&Vec::<u8>::try_from(&packed)?)?;
    }
    Ok(file.flush()?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads: i32 = std::env::var("BENCH_THREADS").map_or(Ok(2), |t| t.parse())?;
    tch::set_num_threads(threads);
    let number = |i: usize| -> Result<i64> {
        args.get(i)
            .context("usage: bench <case> <d> <blocks> <seed> [out-dir]")?
            .parse()
            .context("not a number")
    };
    let case = args.first().map_or("", String::as_str);
    let (d, blocks, seed) = (number(1)?, number(2)?, number(3)?);
    let vs = nn::VarStore::new(Device::Cpu);
    let layers = build(&vs, d, blocks, seed);
    let params: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    if case == "checksum" {
        // The sum of each tensor's bit patterns: any differing bit changes it.
        let sums: Vec<i64> = layers
            .iter()
            .flat_map(|l| [&l.weight, &l.bias])
            .map(|t| t.view_dtype(Kind::Int).sum(Kind::Int64).int64_value(&[]))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "params": params, "checksums": sums })
        );
        return Ok(());
    }
    let out_dir = std::path::PathBuf::from(args.get(4).context("missing out-dir")?);
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    let repeats: usize = std::env::var("BENCH_REPEATS").map_or(Ok(5), |r| r.parse())?;

    let baseline = reset_peak()?;
    let mut masks = Vec::new();
    let mut extra = serde_json::Map::new();
    let start = Instant::now();
    let seconds = match case {
        // Prune every weight, keep its mask (the buffer itself, no copy), make it permanent.
        "l1" | "ln" | "global" | "bool-global" => {
            let pruner = match case {
                "bool-global" => Pruner::with_bool_masks(&vs),
                _ => Pruner::new(&vs),
            };
            match case {
                "l1" => names
                    .iter()
                    .try_for_each(|n| pruner.l1_unstructured(n, 0.5, None))?,
                "ln" => names
                    .iter()
                    .try_for_each(|n| pruner.ln_structured(n, 0.5, 2.0, 0, None))?,
                _ => pruner.global_unstructured(
                    &names,
                    &L1Unstructured::new(0.5)?,
                    &HashMap::new(),
                )?,
            }
            masks = names
                .iter()
                .map(|n| pruner.mask(n).expect("pruned"))
                .collect();
            pruner.remove_all()?;
            start.elapsed().as_secs_f64()
        }
        // The same pruning made permanent at once (`prune_and_remove`): no mask is kept, so
        // both sides compare their final weights' non-zeros (written after the peak is read).
        "l1-at-once" | "ln-at-once" | "global-at-once" => {
            let pruner = Pruner::new(&vs);
            match case {
                "l1-at-once" => names.iter().try_for_each(|n| {
                    pruner.prune_and_remove(n, &L1Unstructured::new(0.5)?, None)
                })?,
                "ln-at-once" => names.iter().try_for_each(|n| {
                    pruner.prune_and_remove(n, &LnStructured::new(0.5, 2.0, 0)?, None)
                })?,
                _ => pruner.global_unstructured_and_remove(
                    &names,
                    &L1Unstructured::new(0.5)?,
                    &HashMap::new(),
                )?,
            }
            masks = layers.iter().map(|l| l.weight.shallow_clone()).collect();
            start.elapsed().as_secs_f64()
        }
        // Inference with the masks in place and nothing changed since the last forward, against
        // the same model unpruned: the cost of keeping masks applied, PyTorch's hooks' job.
        "forward" => {
            let x = Tensor::randn([8, 128, d], (Kind::Float, Device::Cpu));
            let unpruned = timings(repeats, || {
                let _ = tch::no_grad(|| forward(&layers, &x));
                Ok(())
            })?;
            let pruner = Pruner::new(&vs);
            names
                .iter()
                .try_for_each(|n| pruner.l1_unstructured(n, 0.5, None))?;
            let model = |x: &Tensor| pruner.forward(|| tch::no_grad(|| forward(&layers, x)));
            let pruned = timings(repeats, || model(&x).map(drop).map_err(Into::into))?;
            let (seconds, unpruned_seconds) = (median(&pruned), median(&unpruned));
            extra.insert("unpruned_seconds".into(), unpruned_seconds.into());
            extra.insert("ratio".into(), (seconds / unpruned_seconds).into());
            extra.insert("runs".into(), pruned.into());
            extra.insert("unpruned_runs".into(), unpruned.into());
            seconds
        }
        // One SGD step (forward, backward, update) with every weight pruned: the masks are
        // reapplied before each forward since the step changed `_orig`.
        "train" => {
            let pruner = Pruner::new(&vs);
            names
                .iter()
                .try_for_each(|n| pruner.l1_unstructured(n, 0.5, None))?;
            let mut opt = nn::Sgd::default().build(&vs, 1e-3)?;
            let x = Tensor::randn([8, 128, d], (Kind::Float, Device::Cpu));
            let runs = timings(repeats.min(3), || {
                let out = pruner.forward(|| forward(&layers, &x))?;
                opt.backward_step(&out.square().mean(Kind::Float));
                Ok(())
            })?;
            extra.insert("runs".into(), runs.clone().into());
            median(&runs)
        }
        other => bail!("unknown case '{other}'"),
    };
    let peak = status_bytes("VmHWM:")? - baseline;

    let mask_path = out_dir.join(format!("crate-{case}.bits"));
    let mask_file = if masks.is_empty() {
        None
    } else {
        write_bits(&mask_path, &masks)?;
        Some(mask_path.display().to_string())
    };
    let mut line = serde_json::json!({
        "side": "crate", "case": case, "params": params, "threads": threads,
        "seconds": seconds, "peak_bytes": peak, "baseline_rss_bytes": baseline,
        "mask_file": mask_file,
    });
    line.as_object_mut().expect("object").extend(extra);
    println!("{line}");
    Ok(())
}
