//! `tch-prune`: prune PyTorch models (TorchScript, state dicts, safetensors) from the command
//! line, with PyTorch's exact semantics. A thin layer over the `tch_prune` library.

mod plan;
mod stream;

use anyhow::{bail, Context, Result};
use clap::{error::ErrorKind, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use plan::{parse_plan, split_patterns, MethodName, Step};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::Device;
use tch_prune::checkpoint::write_safetensors;
use tch_prune::{ModelFile, Report};

#[derive(Parser)]
#[command(
    name = "tch-prune",
    version,
    about = "Prune PyTorch models exactly as torch.nn.utils.prune does"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prune a model file and write it back, pruning made permanent.
    #[command(
        after_help = "Examples:\n  tch-prune prune model.pt -o pruned.pt --method l1-unstructured --amount 0.3\n  tch-prune prune sd.safetensors -o out.safetensors --method l1-unstructured --amount 0.5 --global\n  tch-prune prune model.pt -o out.pt --method ln-structured --amount 2 --n 2 --dim 0 --params 'features.*'\n  tch-prune prune model.pt -o out.pt --method nm --pattern 2:4\n  tch-prune prune model.pt -o out.pt --plan plan.json --seed 0 --state-out pruned-state.safetensors"
    )]
    Prune(Box<PruneArgs>),
    /// Show each tensor's shape, dtype, element count, zeros and sparsity, then totals.
    Report {
        /// A TorchScript .pt, a torch.save state-dict .pt, or a .safetensors file.
        input: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write the per-tensor sparsity as an SVG bar chart (opens in a browser).
        #[arg(long, value_name = "OUT.svg")]
        svg: Option<PathBuf>,
    },
    /// Show the libtorch in use and its CUDA backend: compiled in, loaded, devices, cuDNN.
    ///
    /// When there is no CUDA device, says why (no driver, a CPU-only libtorch, or a binary
    /// linked without libtorch's CUDA part).
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(crate) struct PruneArgs {
    /// A TorchScript .pt, a torch.save state-dict .pt, a .safetensors file, or a sharded
    /// checkpoint: its *.safetensors.index.json, or the folder holding it. Safetensors inputs are
    /// pruned by streaming (memory-mapped, written tensor by tensor: any size) whenever that
    /// gives the in-memory answer; the summary says which path ran.
    input: PathBuf,
    /// Where to write the pruned model (same format as the input). For a sharded input, a folder
    /// that does not exist yet (or is empty): the same shards and index appear in it whole or
    /// not at all.
    #[arg(short, long)]
    output: PathBuf,
    /// l1-unstructured, random-unstructured, ln-structured, random-structured, identity, or
    /// nm (N:M semi-structured sparsity, with --pattern).
    #[arg(long, required_unless_present = "plan")]
    method: Option<String>,
    /// A number with a decimal point is a fraction (0.3, 1.0), an integer a count (12), as in PyTorch.
    #[arg(long, allow_hyphen_values = true)]
    amount: Option<String>,
    /// Comma-separated names or glob patterns ('*.weight', 'features.*'). Default: every
    /// parameter whose name ends in 'weight' and that has at least two dimensions.
    ///
    /// Order (what seeded random methods and --global depend on): names are pruned in the
    /// order given, a pattern's matches in the file's order. A safetensors file's order is not
    /// the model's (it sorts by dtype and name): list the names in the model's order to get what
    /// PyTorch gives. Buffers (running_mean, running_var, num_batches_tracked, a TorchScript
    /// module's buffers) are never selected; naming one is an error. Tied weights (names
    /// sharing one tensor) are one tensor, pruned once, whichever of their names is selected.
    #[arg(long)]
    params: Option<String>,
    /// Rank all selected tensors together (unstructured methods only).
    #[arg(long)]
    global: bool,
    /// The norm of ln-structured: 1, 2, inf, -inf, fro, nuc, or any number.
    #[arg(long, allow_hyphen_values = true)]
    n: Option<String>,
    /// The channel dimension of the structured methods (negative counts from the end); for nm,
    /// the dimension the blocks run along (default 1, the input dimension).
    #[arg(long, allow_hyphen_values = true)]
    dim: Option<i64>,
    /// The pattern of nm: keep N of every M consecutive entries (2:4 is what sparse tensor
    /// cores take), the largest magnitudes, as torch.ao.pruning's WeightNormSparsifier.
    #[arg(long, value_name = "N:M")]
    pattern: Option<String>,
    /// Seed for the random methods: on CPU, the result equals PyTorch's after
    /// torch.manual_seed(SEED) and the same calls in the same order.
    #[arg(long)]
    seed: Option<i64>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also write the reparametrized state (<name>_orig, <name>_mask, everything else) as
    /// safetensors, after the pruned model.
    #[arg(long, value_name = "FILE")]
    state_out: Option<PathBuf>,
    /// A JSON list of steps ({"params", "method", "amount", "n", "dim", "global", "pattern"}),
    /// applied in order. "params" is a string as for --params or a list of names and patterns; a
    /// list of names is the order the step prunes in (the way to give a safetensors file's model
    /// order).
    #[arg(long, value_name = "PLAN.json", conflicts_with_all = ["method", "amount", "params", "global", "n", "dim", "pattern"])]
    plan: Option<PathBuf>,
    /// Load the whole model into memory even where the streaming path (safetensors read through
    /// a memory map, written tensor by tensor, same bytes out) could take the run.
    #[arg(long)]
    in_memory: bool,
}

fn main() -> ExitCode {
    // `--version` names the libtorch too (the CUDA details take `doctor`: they initialise CUDA).
    let version = format!(
        "{} (libtorch {}; `tch-prune doctor` shows its CUDA backend)",
        env!("CARGO_PKG_VERSION"),
        tch_prune::backend::libtorch_version()
    );
    // clap keeps a `&'static str`: this one string is leaked, once per process.
    let parsed = Cli::command()
        .version(&*Box::leak(version.into_boxed_str()))
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // `tch-prune` alone: the help, on stderr.
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // One line: clap's message up to its usage block (a missing argument's name is on
            // the lines after the first).
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", message.join(" "));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Prune(args) => prune(*args),
        Command::Report { input, json, svg } => report(&input, json, svg.as_deref()),
        Command::Doctor { json } => doctor(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain, without libtorch's backtraces.
            let chain: Vec<String> = e
                .chain()
                .map(|c| tch_prune::first_line(&c.to_string()))
                .collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn steps(args: &PruneArgs) -> Result<Vec<Step>> {
    if let Some(plan) = &args.plan {
        let text = std::fs::read_to_string(plan)
            .with_context(|| format!("cannot read plan {}", plan.display()))?;
        return parse_plan(&text).with_context(|| plan.display().to_string());
    }
    let method: MethodName = args.method.as_deref().unwrap_or_default().parse()?;
    let step = Step {
        params: args.params.as_deref().map(split_patterns),
        method,
        amount: args.amount.as_deref().map(str::parse).transpose()?,
        n: args.n.as_deref().map(str::parse).transpose()?,
        dim: args.dim,
        global: args.global,
        pattern: args.pattern.as_deref().map(str::parse).transpose()?,
    };
    step.method()?;
    Ok(vec![step])
}

fn device(name: &str) -> Result<Device> {
    let device = match name.to_ascii_lowercase().as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Device::Cuda(i),
            None => bail!("unknown device '{name}': use cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(i) = device {
        if !tch::Cuda::is_available() || i as i64 >= tch::Cuda::device_count() {
            bail!("device '{name}' is not available on this machine");
        }
    }
    Ok(device)
}

fn prune(args: PruneArgs) -> Result<()> {
    let steps = steps(&args)?;
    let device = device(&args.device)?;
    let why_in_memory = match stream::prune(&args, &steps)? {
        stream::Outcome::Streamed(summary) => {
            println!("{summary}");
            return Ok(());
        }
        stream::Outcome::InMemory(reason) => reason,
    };
    let model = ModelFile::open(&args.input, device)?;
    let parameters = model.parameters();
    let buffers = model.buffers();
    let selections = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let names = s
                .select(&parameters, &buffers)
                .with_context(|| format!("step {}", i + 1))?;
            // Tied weights are one tensor, pruned once under one name, as PyTorch lists a tied
            // Parameter once.
            let mut seen = HashSet::new();
            Ok(names
                .iter()
                .map(|n| model.canonical(n).to_string())
                .filter(|n| seen.insert(n.clone()))
                .collect::<Vec<_>>())
        })
        .collect::<Result<Vec<_>>>()?;

    let pruner = model.pruner()?;
    // Pruned in this run or by the file's own `_orig`/`_mask`, for the summary.
    let mut pruned = pruner.pruned_names();
    let mut seen: HashSet<String> = pruned.iter().cloned().collect();
    for name in selections.iter().flatten() {
        if seen.insert(name.clone()) {
            pruned.push(name.clone());
        }
    }
    // A tensor's last step makes its pruning permanent at once (in place, without a second copy
    // of the weights), unless the reparametrized state is to be written too.
    let last_step: HashMap<&str, usize> = selections
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (n.as_str(), i)))
        .collect();
    let at_once = |i: usize, names: &[String]| {
        args.state_out.is_none() && names.iter().all(|n| last_step[n.as_str()] == i)
    };
    if let Some(seed) = args.seed {
        tch::manual_seed(seed);
    }
    let work: usize = steps
        .iter()
        .zip(&selections)
        .map(|(s, names)| if s.global { 1 } else { names.len() })
        .sum();
    let bar = ProgressBar::new(work as u64).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    for (i, (step, names)) in steps.iter().zip(&selections).enumerate() {
        bar.set_message(format!("step {}: {}", i + 1, step.method));
        let groups: Vec<&[String]> = if step.global {
            vec![names]
        } else {
            names.iter().map(std::slice::from_ref).collect()
        };
        for group in groups {
            let applied = if at_once(i, group) {
                step.apply_and_remove(&pruner, group)
            } else {
                step.apply(&pruner, group)
            };
            // Name the tensor: a step over many tensors can fail on one of them.
            applied.with_context(|| match group {
                [name] => format!("step {} ({}) on '{name}'", i + 1, step.method),
                names => format!(
                    "step {} ({}, global over {} tensors: {})",
                    i + 1,
                    step.method,
                    names.len(),
                    shorten(names)
                ),
            })?;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    // Taken before `remove_all` (which releases `_orig`), written after the model: the pruned
    // model is the output that matters, so it is written first.
    let state = match &args.state_out {
        Some(path) => Some((path, model.reparametrized_state(&pruner)?)),
        None => None,
    };
    pruner.remove_all()?;
    model.save(&args.output, &pruner)?;
    if let Some((path, state)) = state {
        write_safetensors(path, &state)?;
    }
    let report = report_of(&model, &pruner)?;
    println!(
        "pruned {} tensors to {:.2}% sparsity ({:.2}% of all {} elements are zero); wrote {} (in memory: {why_in_memory})",
        pruned.len(),
        100.0 * report.sparsity_of(&pruned),
        100.0 * report.sparsity,
        report.numel,
        args.output.display()
    );
    Ok(())
}

/// The sparsity of every tensor of the model, a tied tensor counted once.
fn report_of(model: &ModelFile, pruner: &tch_prune::Pruner) -> Result<Report> {
    let ties = model.ties().into_iter().collect();
    Ok(Report::with_ties(&model.tensors(pruner), &ties)?)
}

/// The first few names of a list, for a one-line message.
fn shorten(names: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", ... {} more", names.len() - SHOWN));
    }
    text
}

fn report(input: &Path, json: bool, svg: Option<&Path>) -> Result<()> {
    let model = ModelFile::open(input, Device::Cpu)?;
    let report = report_of(&model, &model.pruner()?)?;
    if let Some(svg) = svg {
        #[cfg(feature = "plot")]
        report.write_svg(
            svg,
            &input.file_name().unwrap_or_default().to_string_lossy(),
        )?;
        #[cfg(not(feature = "plot"))]
        bail!(
            "cannot write {}: this tch-prune was built without the 'plot' feature",
            svg.display()
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn doctor(json: bool) -> Result<()> {
    let backend = tch_prune::backend::Backend::detect();
    if json {
        println!("{}", serde_json::to_string_pretty(&backend)?);
    } else {
        println!("{backend}");
    }
    Ok(())
}
