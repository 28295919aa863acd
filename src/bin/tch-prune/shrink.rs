//! `tch-prune shrink`: remove channels from a TorchScript model (ScriptModel::shrink) and show
//! what it gained: per group the channels before and after, then parameters, MACs, file size
//! and measured latency of both models.

use crate::limits::{self, Limits};
use crate::plan::{glob_match, split_patterns};
use crate::shrink_result::{check_shrank, check_verified, print_sizes, ratio, relative_error};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::Format;
use tch_prune::model::ScriptModel;
use tch_prune::shrink::{ShrinkOptions, ShrinkReport};
use tch_prune::Amount;

#[derive(Args)]
pub struct ShrinkArgs {
    /// A TorchScript .pt (torch.jit.save), a torch.export archive .pt2 (torch.export.save:
    /// analysed and rewritten without running anything, its shapes the program's own), or a
    /// Hugging Face model folder of a decoder family shrink knows (config.json's model_type
    /// llama, mistral or qwen2): see --mlp-amount.
    pub(crate) input: PathBuf,
    /// Where to write the smaller model (of the input's format): a regular file or a new name
    /// in an existing folder (links, devices and folders are refused), not the input. Written
    /// last, after --verify passed: a failing run writes nothing.
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// For a model folder: MLP neurons to remove in every layer (a fraction of
    /// intermediate_size, or a count); default --amount. Each neuron is a row of gate_proj and
    /// up_proj and a column of down_proj.
    #[arg(long)]
    pub(crate) mlp_amount: Option<String>,
    /// For a model folder: attention heads to remove in every layer (a fraction, or a count of
    /// key/value heads); default --amount. A key/value head goes with the query heads that
    /// read it (grouped-query attention); for llama the count is rounded to one that divides
    /// hidden_size, as transformers' LlamaConfig requires, and the summary says so.
    #[arg(long)]
    pub(crate) head_amount: Option<String>,
    /// For a model folder: a safetensors file of importance scores (higher is kept):
    /// 'model.layers.<i>.mlp' (one per neuron), 'model.layers.<i>.self_attn' (one per key/value
    /// head, or per attention head). Default: the L2 norm of each group's weights.
    #[arg(long, value_name = "SCORES.safetensors")]
    pub(crate) scores: Option<PathBuf>,
    /// Load the TorchScript file even if its code would run (see prune --help): shrink runs the
    /// model's forward, so only for files you would run as programs.
    #[arg(long)]
    trust_code: bool,
    /// Channels to remove per group: a fraction (0.5) or a count (16), as PyTorch reads amounts.
    /// With --global, of all shrinkable channels together.
    #[arg(long, required_unless_present_any = ["exact", "mlp_amount", "head_amount"])]
    pub(crate) amount: Option<String>,
    /// Remove exactly the channels whose every coupled parameter slice is already zero: the
    /// layer's weight rows and bias, its batch norm's scale and shift, and the input columns of
    /// the layers that read it (ln-structured pruning of the conv alone leaves those). The
    /// outputs change only by float summation order in the layers reading fewer channels.
    #[arg(long, conflicts_with_all = ["amount", "global", "round_to"])]
    exact: bool,
    /// The importance norm: 1 (L1) or 2 (L2, Torch-Pruning's default), over every coupled slice.
    #[arg(long, default_value = "2")]
    n: String,
    /// Rank the channels of all groups together (scores divided by their group's mean).
    #[arg(long)]
    global: bool,
    /// Keep a multiple of K channels per group (rounded up), for hardware-friendly widths.
    #[arg(long, value_name = "K", default_value_t = 1)]
    round_to: i64,
    /// Comma-separated names or glob patterns ('layer3.*'): only the groups whose channels one of
    /// these parameters produces (a conv's or linear layer's output channels) shrink.
    #[arg(long)]
    params: Option<String>,
    /// The example input's shape: the analysis, MACs and latency are for it [default:
    /// 1,3,224,224]. Not for a .pt2, whose program holds the shapes it was exported with.
    #[arg(long)]
    input_shape: Option<String>,
    /// Check that the shrunk model's output equals the original's with the removed channels
    /// zeroed (relative error at most 1e-4) and fail otherwise, writing nothing. TorchScript
    /// only: tch-prune cannot run a .pt2 (check it in Python, see docs/pt2.md).
    #[arg(long)]
    verify: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// The example input's dtype: float32, float16, bfloat16, float64, or int64 / int32 for
    /// models that take token ids or other indices (then give --input-range).
    #[arg(long, default_value = "float32")]
    input_dtype: String,
    /// For an integer --input-dtype: the values drawn, LOW inclusive to HIGH exclusive
    /// (token ids: 0,VOCAB_SIZE).
    #[arg(long, value_name = "LOW,HIGH")]
    input_range: Option<String>,
    /// Timed runs per model for the latency (after two warm-up runs).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The longest one run of the model's code may take (the analysis, each timed run, the
    /// check): seconds (60, 90s) or minutes (2m). Past it the run ends with an error.
    #[arg(long, value_name = "SECONDS", default_value = "120")]
    time_limit: String,
    /// The most memory one run of the model's code may take beyond what the process holds
    /// before it (host memory; 4G, 512M). Default: 2G, or 4 times the model file if larger.
    #[arg(long, value_name = "SIZE")]
    memory_limit: Option<String>,
}

#[derive(serde::Serialize)]
struct Summary<'a> {
    input: String,
    output: String,
    input_shape: Vec<i64>,
    #[serde(flatten)]
    report: &'a ShrinkReport,
    file_bytes_before: u64,
    file_bytes_after: u64,
    latency_ms_before: f64,
    latency_ms_after: f64,
    /// Timed runs per model behind each latency (their median).
    runs: usize,
    verify_relative_error: Option<f64>,
}

/// The example input: random normal floats, or for an integer dtype, integers drawn from
/// `--input-range` (token ids into an embedding must be integers in range).
fn example_input(args: &ShrinkArgs, shape: &[i64], device: Device) -> Result<Tensor> {
    let kind = match args.input_dtype.to_ascii_lowercase().as_str() {
        "float32" | "float" => Kind::Float,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "float64" | "double" => Kind::Double,
        "int64" | "long" => Kind::Int64,
        "int32" | "int" => Kind::Int,
        other => {
            bail!("--input-dtype {other}: use float32, float16, bfloat16, float64, int64 or int32")
        }
    };
    let integer = matches!(kind, Kind::Int64 | Kind::Int);
    match (&args.input_range, integer) {
        (None, false) => Ok(Tensor::randn(shape, (kind, device))),
        (None, true) => bail!("--input-dtype {}: give the values to draw, --input-range LOW,HIGH (token ids: 0,VOCAB_SIZE)", args.input_dtype),
        (Some(_), false) => bail!("--input-range is for an integer --input-dtype (int64, int32)"),
        (Some(range), true) => {
            let bounds: Vec<i64> = range
                .split(',')
                .map(|v| v.trim().parse::<i64>())
                .collect::<Result<_, _>>()
                .ok()
                .filter(|b: &Vec<i64>| b.len() == 2 && b[0] < b[1])
                .with_context(|| format!("--input-range '{range}': give LOW,HIGH with LOW < HIGH, e.g. 0,32000"))?;
            Ok(Tensor::randint_low(bounds[0], bounds[1], shape, (kind, device)))
        }
    }
}

fn parse_shape(s: &str) -> Result<Vec<i64>> {
    let shape: Vec<i64> = s
        .split(',')
        .map(|d| d.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!("--input-shape '{s}': use comma-separated sizes such as 1,3,224,224")
        })?;
    if shape.is_empty() || shape.iter().any(|&d| d < 1) {
        bail!("--input-shape '{s}': every size must be at least 1");
    }
    Ok(shape)
}

/// The model's outputs on `x` as one flat tensor: models such as GoogLeNet and Inception return
/// a (named) tuple, whose tensors are all compared.
fn outputs(m: &ScriptModel, x: &Tensor, limits: &Limits) -> Result<Tensor> {
    Ok(timed_outputs(m, x, limits)?.0)
}

/// [`outputs`] and how long the forward took, in milliseconds (measured inside the limits'
/// guard, which is not timed).
fn timed_outputs(m: &ScriptModel, x: &Tensor, limits: &Limits) -> Result<(Tensor, f64)> {
    fn collect(v: tch::IValue, out: &mut Vec<Tensor>) {
        match v {
            tch::IValue::Tensor(t) => out.push(t.flatten(0, -1)),
            tch::IValue::Tuple(vs) | tch::IValue::GenericList(vs) => {
                vs.into_iter().for_each(|v| collect(v, out))
            }
            tch::IValue::TensorList(ts) => out.extend(ts.into_iter().map(|t| t.flatten(0, -1))),
            _ => {}
        }
    }
    let (y, ms) = limits.run("forward", || {
        let start = Instant::now();
        let y = tch::no_grad(|| {
            m.module()
                .forward_is(&[tch::IValue::Tensor(x.shallow_clone())])
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "the model's forward failed: {}",
                crate::text::torchscript_whole(&e.to_string())
            )
        })?;
        // The first tensor of the result, waited for on a GPU.
        let mut tensors = Vec::new();
        collect(y, &mut tensors);
        if let Some(Device::Cuda(i)) = tensors.first().map(Tensor::device) {
            tch::Cuda::synchronize(i as i64);
        }
        Ok((tensors, start.elapsed().as_secs_f64() * 1e3))
    })?;
    if y.is_empty() {
        bail!("the model's forward returned no tensor: shrink compares tensor outputs");
    }
    Ok((Tensor::cat(&y, 0), ms))
}

/// Median of `runs` timed forward passes, in milliseconds, after two warm-up runs; the two
/// models alternate so that both see the same machine load.
fn latencies(
    a: &ScriptModel,
    b: &ScriptModel,
    x: &Tensor,
    runs: usize,
    limits: &Limits,
) -> Result<(f64, f64)> {
    let time = |m: &ScriptModel| -> Result<f64> { Ok(timed_outputs(m, x, limits)?.1) };
    for _ in 0..2 {
        time(a)?;
        time(b)?;
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        ta.push(time(a)?);
        tb.push(time(b)?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(ta), median(tb)))
}

impl ShrinkArgs {
    pub fn device_name(&self) -> String {
        self.device.clone()
    }
}

/// The example input's size in bytes (f32), refused before anything is allocated when it would
/// not fit in the memory limit (or in a u64).
fn check_input_size(text: &str, shape: &[i64], limits: &Limits) -> Result<()> {
    let bytes = shape
        .iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64));
    match bytes {
        Some(b) if b <= limits.memory => Ok(()),
        Some(b) => bail!(
            "--input-shape {text}: the example input would take {b} bytes ({}) of f32, more than the {} memory limit (--memory-limit): give a smaller shape",
            limits::shown(b),
            limits::shown(limits.memory)
        ),
        None => bail!(
            "--input-shape {text}: the example input would take more than 2^64 bytes: give a smaller shape"
        ),
    }
}

/// Fails unless `input` is a TorchScript file, naming what it is otherwise.
fn check_torchscript(input: &std::path::Path) -> Result<()> {
    let what = match Format::detect(input)? {
        Format::TorchScript => return Ok(()),
        Format::TorchZip => "a torch.save checkpoint (weights without the model's code)",
        Format::Safetensors => "a safetensors file (weights without the model's code)",
        // Never reached: `run` takes a .pt2 down its own path first.
        Format::Pt2 => "a torch.export archive (.pt2)",
    };
    bail!(
        "{}: shrink needs a TorchScript file (torch.jit.save, or torch.jit.trace then save), and this is {what}",
        input.display()
    )
}

pub fn run(args: ShrinkArgs, device: Device) -> Result<()> {
    if args.input.is_dir() {
        if args.exact || args.global || args.verify || args.params.is_some() || args.round_to != 1 {
            bail!("{}: a model folder shrinks by --amount, --mlp-amount, --head-amount and --scores; --exact, --global, --verify, --params and --round-to are for TorchScript files and .pt2 archives", args.input.display());
        }
        return crate::shrink_hf::run(&crate::shrink_hf::FolderArgs {
            input: args.input,
            output: args.output,
            amount: args.amount,
            mlp_amount: args.mlp_amount,
            head_amount: args.head_amount,
            scores: args.scores,
            json: args.json,
        });
    }
    if args.mlp_amount.is_some() || args.head_amount.is_some() || args.scores.is_some() {
        bail!(
            "{}: --mlp-amount, --head-amount and --scores are for a Hugging Face model folder",
            args.input.display()
        );
    }
    let shape_text = args
        .input_shape
        .clone()
        .unwrap_or_else(|| "1,3,224,224".into());
    let shape = parse_shape(&shape_text)?;
    let norm = match args.n.as_str() {
        "1" => 1.0,
        "2" => 2.0,
        other => bail!("--n {other}: shrink ranks channels by the L1 (--n 1) or L2 (--n 2) norm"),
    };
    let amount: Option<Amount> = args.amount.as_deref().map(str::parse).transpose()?;
    crate::outputs::check(&args.input, Some(&args.output), None)?;
    // The output is written once every run has passed, from the module in memory: the input
    // is loaded twice (the shrunk model and the reference), so it may not be the output.
    crate::outputs::check_other(&args.input, &args.output, "-o")?;
    let limits = Limits::from_flags(&args.time_limit, args.memory_limit.as_deref(), &args.input)?;
    if Format::detect(&args.input)? == Format::Pt2 {
        return run_pt2(&args, amount, norm, limits);
    }
    check_input_size(&shape_text, &shape, &limits)?;
    check_torchscript(&args.input)?;
    let policy = crate::policy(args.trust_code);
    let mut model = ScriptModel::load_with(&args.input, device, policy)?;
    model.set_train(false)?;
    let opts = options(&args, amount, norm, model.parameter_names())?;
    tch::manual_seed(0);
    let x = example_input(&args, &shape, device)?;
    let report = limits
        .run("forward (the analysis)", || Ok(model.shrink(&x, &opts)?))
        .with_context(|| format!("cannot shrink {}", args.input.display()))?;
    // What is saved: the shrunk model as the analysis left it (checked unchanged by its runs),
    // compared again after the timed runs and the check, which run its code too.
    let shrunk = model.snapshot(&report.buffers)?;
    check_shrank(&report, args.exact, &args.output)?;

    let mut original = ScriptModel::load_with(&args.input, device, policy)?;
    original.set_train(false)?;
    let (before, after) = latencies(&original, &model, &x, args.runs, &limits)?;
    let verify_relative_error = if args.verify {
        original.zero_channels(&report.removed)?;
        let reference = outputs(&original, &x, &limits)?;
        let y = outputs(&model, &x, &limits)?;
        Some(relative_error(&y, &reference)?)
    } else {
        None
    };
    model.check_unchanged(&shrunk)?;
    // Decided before anything is written: a failed check leaves no file.
    check_verified(verify_relative_error, &args.output)?;
    model.save(&args.output)?;
    let summary = Summary {
        input: args.input.display().to_string(),
        output: args.output.display().to_string(),
        input_shape: shape,
        report: &report,
        file_bytes_before: std::fs::metadata(&args.input)?.len(),
        file_bytes_after: std::fs::metadata(&args.output)?.len(),
        latency_ms_before: before,
        latency_ms_after: after,
        runs: args.runs.max(1),
        verify_relative_error,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(())
}

/// `shrink` on a `.pt2`: its shapes are the program's own, so `--input-shape` is refused.
fn run_pt2(args: &ShrinkArgs, amount: Option<Amount>, norm: f64, limits: Limits) -> Result<()> {
    if args.input_shape.is_some() {
        bail!("{}: --input-shape is for TorchScript; a .pt2 program holds the shapes it was exported with, which shrink reads (export it again with another example input for other shapes)", args.input.display());
    }
    crate::shrink_pt2::run(
        &crate::shrink_pt2::Pt2Args {
            input: args.input.clone(),
            output: args.output.clone(),
            json: args.json,
            verify: args.verify,
            limits,
        },
        |parameters| options(args, amount, norm, parameters),
    )
}

/// The options of the command line; `--params` is matched against `parameters`, each of its
/// patterns matching one at least.
pub(crate) fn options(
    args: &ShrinkArgs,
    amount: Option<Amount>,
    norm: f64,
    parameters: &[String],
) -> Result<ShrinkOptions> {
    let params = match &args.params {
        None => None,
        Some(p) => {
            let mut set = HashSet::new();
            for pat in split_patterns(p) {
                let hits: Vec<&String> =
                    parameters.iter().filter(|n| glob_match(&pat, n)).collect();
                if hits.is_empty() {
                    bail!(
                        "--params '{pat}' matches no parameter of {}",
                        args.input.display()
                    );
                }
                set.extend(hits.into_iter().cloned());
            }
            Some(set)
        }
    };
    Ok(ShrinkOptions {
        amount,
        norm,
        global: args.global,
        round_to: args.round_to,
        params,
        exact: args.exact,
    })
}

fn print_table(s: &Summary) {
    let r = s.report;
    print_sizes(r, s.file_bytes_before, s.file_bytes_after);
    println!(
        "latency: the median of {} forward passes per model after 2 warm-up runs, the models alternating, on the input below",
        s.runs
    );
    println!(
        "{:<12} {:>14} {:>14} {:>8.3}",
        "latency",
        format!("{:.2} ms", s.latency_ms_before),
        format!("{:.2} ms", s.latency_ms_after),
        ratio(s.latency_ms_before, s.latency_ms_after)
    );
    for n in &r.notes {
        println!("note: {n}");
    }
    if let Some(e) = s.verify_relative_error {
        println!(
            "verify: relative error {e:.3e} against the original with the removed channels zeroed"
        );
    }
    println!("wrote {} (input shape {:?})", s.output, s.input_shape);
}
