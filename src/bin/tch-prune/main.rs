//! `tch-prune`: prune PyTorch models (TorchScript, state dicts, safetensors) from the command
//! line, with PyTorch's exact semantics. A thin layer over the `tch_prune` library.

mod calibrated;

mod folder;
mod limits;
mod outputs;
mod pattern;
mod plan;
mod quiet;
mod shrink;
mod shrink_hf;
mod shrink_pt2;
mod shrink_result;
mod signals;
mod stream;
// The library's one-line text helpers, compiled from the same source rather than exported.
#[path = "../../checkpoint/text.rs"]
mod text;

use anyhow::{bail, Context, Result};
use clap::{error::ErrorKind, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use plan::{parse_plan, split_patterns, MethodName, Step};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::Device;
use tch_prune::checkpoint::{
    read_input, write_all_or_nothing, CodePolicy, HfFolder, ShardIndex, MAX_SMALL_FILE,
};
use tch_prune::model::{ModelFile, Report, StreamedModel};

#[derive(Parser)]
#[command(
    name = "tch-prune",
    version,
    about = "Prune PyTorch models exactly as torch.nn.utils.prune does"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Show libtorch's own warnings, which are hidden otherwise.
    #[arg(long, global = true)]
    libtorch_warnings: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Prune a model file and write it back, pruning made permanent.
    #[command(
        after_help = "Examples:\n  tch-prune prune model.pt -o pruned.pt --method l1-unstructured --amount 0.3\n  tch-prune prune sd.safetensors -o out.safetensors --method l1-unstructured --amount 0.5 --global\n  tch-prune prune model.pt -o out.pt --method ln-structured --amount 2 --n 2 --dim 0 --params 'features.*'\n  tch-prune prune model.pt -o out.pt --method nm --pattern 2:4\n  tch-prune prune model.pt -o out.pt --plan plan.json --seed 0 --state-out pruned-state.safetensors"
    )]
    Prune(Box<PruneArgs>),
    /// Remove channels from a TorchScript model or a torch.export archive (.pt2): smaller and faster, the code unchanged.
    #[command(
        after_help = "Examples:\n  tch-prune shrink Llama-3.2-1B/ -o Llama-3.2-1B-shrunk/ --amount 0.25\n  tch-prune shrink resnet18.pt2 -o half.pt2 --amount 0.5\n  tch-prune shrink qwen2/ -o out/ --mlp-amount 0.3 --head-amount 0.25\n  tch-prune shrink resnet18.pt -o half.pt --amount 0.5 --input-shape 1,3,224,224 --verify\n  tch-prune shrink model.pt -o out.pt --amount 0.3 --global --round-to 8\n  tch-prune shrink pruned.pt -o out.pt --exact --verify"
    )]
    Shrink(Box<shrink::ShrinkArgs>),
    /// Show each tensor's shape, dtype, element count, zeros and sparsity, then totals.
    Report {
        /// A TorchScript .pt, a torch.save state-dict .pt, or a .safetensors file.
        input: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Let libtorch load a TorchScript file whose code it would run (see prune --help).
        #[arg(long)]
        trust_code: bool,
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
    /// checkpoint: its *.safetensors.index.json, or the folder holding it. Safetensors and
    /// torch.save inputs are pruned by streaming (memory-mapped, written tensor by tensor: any
    /// size) whenever that gives the in-memory answer; the summary says which path ran.
    input: PathBuf,
    /// Where to write the pruned model (same format as the input): a regular file or a new
    /// name in an existing folder; links, devices and folders are refused. It may be the input.
    /// For a model folder or a sharded input, a folder that does not exist yet (or is empty):
    /// the weights (the same shards and index, or one model.safetensors) and every other file
    /// of the input folder (config.json, tokenizer files, README) appear in it whole or not at
    /// all; naming an index there (out/model.safetensors.index.json) means its folder.
    #[arg(short, long, required_unless_present = "dry_run")]
    output: Option<PathBuf>,
    /// l1-unstructured, random-unstructured, ln-structured, random-structured, identity, nm
    /// (N:M semi-structured sparsity, with --pattern), or wanda / sparsegpt (a TorchScript
    /// model's linear layers pruned from what they see of --calibration, with --amount
    /// FRACTION or --pattern N:M; see docs/activation-aware.md).
    #[arg(long, required_unless_present = "plan")]
    method: Option<String>,
    /// A number with a decimal point is a fraction (0.3, 1.0), an integer a count (12), as in PyTorch.
    #[arg(long, allow_hyphen_values = true)]
    amount: Option<String>,
    /// Comma-separated names or patterns ('*.weight', 'features.*', 'model.layers.{0..3}.*',
    /// 'model.layers.[0-3].mlp.*', '*.{q,k,v}_proj.weight'): '*' any characters, '?' one,
    /// '[0-3]' one of a class, '{0..11}' a number in a range, '{a,b}' either.
    ///
    /// Default: every parameter whose name ends in 'weight' and that has at least two
    /// dimensions (PyTorch's convention); for a Hugging Face model folder (one with a
    /// config.json), those but the embedding tables and the output head ('*embed*', 'wte',
    /// 'wpe', 'lm_head'). A pattern that matches no parameter, or a selection of nothing, is an
    /// error (exit 1), with or without --global. A selection that holds one-dimensional tensors
    /// or embeddings is run with a warning.
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
    /// Seed for the random methods. It seeds the CPU generator and every GPU's, as
    /// torch.manual_seed(SEED) does; random-unstructured draws on the tensor's device,
    /// random-structured on the CPU, as in PyTorch. So the result equals PyTorch's after
    /// torch.manual_seed(SEED) and the same calls in the same order, with the model on the
    /// same device: --device cuda reproduces PyTorch on the GPU (whose generator gives other
    /// numbers than the CPU's), not a CPU run.
    #[arg(long, allow_hyphen_values = true)]
    seed: Option<i64>,
    /// cpu, cuda or cuda:N: where the model is loaded and pruned. Outputs hold their tensors
    /// on the CPU whatever the device (a TorchScript output loads with torch.jit.load where
    /// there is no GPU). On a GPU the results equal PyTorch's on that GPU; l1-unstructured and
    /// the file formats give the same bits as on the CPU, ln-structured may not where CUDA
    /// rounds a norm differently and two channels nearly tie.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also write the reparametrized state (<name>_orig, <name>_mask, everything else) as
    /// safetensors. Must differ from -o and from every file the run reads (the input, each shard,
    /// the index, the files of an input folder). Both files are written, or neither.
    #[arg(long, value_name = "FILE")]
    state_out: Option<PathBuf>,
    /// A JSON list of steps ({"params", "exclude", "method", "amount", "n", "dim", "global",
    /// "pattern"}); a tensor may be pruned by several steps (L1 then 2:4 composes the masks),
    /// applied in order. "params" is a string as for --params or a list of names and patterns; a
    /// list of names is the order the step prunes in (the way to give a safetensors file's model
    /// order).
    #[arg(long, value_name = "PLAN.json", conflicts_with_all = ["method", "amount", "params", "global", "n", "dim", "pattern"])]
    plan: Option<PathBuf>,
    /// For wanda and sparsegpt: a safetensors file of the inputs of the model's forward, the
    /// samples along the first dimension: one tensor named 'input' (input.0, input.1, ... for
    /// a forward of several arguments), of the dtype forward takes (int64 token ids included).
    #[arg(long, value_name = "FILE.safetensors", conflicts_with = "plan")]
    calibration: Option<PathBuf>,
    /// For wanda and sparsegpt: calibration samples per forward pass.
    #[arg(long, default_value_t = 8, requires = "calibration")]
    batch_size: i64,
    /// For wanda and sparsegpt: calibrate and prune block by block, each block on the outputs
    /// of the blocks pruned before it (the references' order), instead of every layer on the
    /// dense model in one pass.
    #[arg(long, requires = "calibration")]
    sequential: bool,
    /// For wanda and sparsegpt: print the summary (each layer's sparsity and reconstruction
    /// error) as JSON.
    #[arg(long, requires = "calibration")]
    json: bool,
    /// For wanda and sparsegpt: the longest one calibration forward pass (the model's code)
    /// may take: seconds (60, 90s) or minutes (2m). Past it the run ends with an error.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "120",
        requires = "calibration"
    )]
    time_limit: String,
    /// For wanda and sparsegpt: the most memory one calibration forward pass may take beyond
    /// what the process holds before it (host memory; 4G, 512M). Default: 2G, or 4 times the
    /// model file if larger.
    #[arg(long, value_name = "SIZE", requires = "calibration")]
    memory_limit: Option<String>,

    /// Comma-separated names or patterns (as for --params) left out of what each step selects,
    /// every step of a plan included (a plan step also takes its own "exclude"). One that
    /// matches no parameter is an error. E.g. --exclude '*embed*,lm_head.weight,*norm*'.
    #[arg(long)]
    exclude: Option<String>,
    /// Print what each step selects (names, shapes, dtypes and element counts) and the
    /// warnings, then exit: nothing is pruned or written, and -o is not needed.
    #[arg(long)]
    dry_run: bool,
    /// Load a TorchScript file even if its code would run: by default a TorchScript input
    /// whose code defines __setstate__ (which libtorch runs while loading), or calls anything
    /// that reads or writes files or reaches other processes, is refused before libtorch sees
    /// it. Only for files you would run as programs.
    #[arg(long)]
    trust_code: bool,
    /// Load the whole model into memory even where the streaming path (safetensors or torch.save
    /// read through a memory map, written tensor by tensor, same bytes out) could take the run.
    #[arg(long)]
    in_memory: bool,
}

fn main() -> ExitCode {
    signals::install();
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
    let show = cli.libtorch_warnings;
    let result = match cli.command {
        Command::Prune(args) => prune(*args, show),
        Command::Report {
            input,
            json,
            svg,
            trust_code,
        } => report(&input, json, svg.as_deref(), policy(trust_code), show),
        Command::Shrink(args) => {
            // As for prune: new outputs take the permission bits of the weights they come from
            // (an input that cannot be resolved is reported by the run itself).
            let weights = folder::Io::resolve(&args.input, None)
                .and_then(|io| io.weight_files())
                .unwrap_or_default();
            tch_prune::checkpoint::with_permissions_of(&weights, || {
                device(&args.device_name()).and_then(|d| shrink::run(*args, d))
            })
        }
        Command::Doctor { json } => doctor(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain, without libtorch's backtraces. The library's errors
            // already show what their sources say (a file's error, libtorch's first line), so
            // a source whose line is already shown is not repeated.
            let mut chain: Vec<String> = Vec::new();
            for cause in e.chain() {
                let line = text::first_line(&cause.to_string());
                if !chain.last().is_some_and(|shown| shown.contains(&line)) {
                    chain.push(line);
                }
            }
            eprintln!("error: {}", one_line(&chain.join(": ")));
            ExitCode::FAILURE
        }
    }
}

/// An error line as printed: one line (control characters escaped), and not megabytes long
/// whatever the user gave (names from files and patterns are cut on their own already).
fn one_line(text: &str) -> String {
    text::escaped_and_cut(text, 4000)
}

fn policy(trust_code: bool) -> CodePolicy {
    if trust_code {
        CodePolicy::Trusted
    } else {
        CodePolicy::Checked
    }
}

fn steps(args: &PruneArgs) -> Result<Vec<Step>> {
    if let Some(plan) = &args.plan {
        // A regular file of bounded size: a pipe or /dev/zero named as the plan is refused at
        // once, not waited on or read until memory runs out.
        let bytes = read_input(plan, MAX_SMALL_FILE, "a plan")?;
        let text = String::from_utf8(bytes).map_err(|_| {
            anyhow::anyhow!("{}: a plan is JSON text, not UTF-8 here", plan.display())
        })?;
        let mut steps = parse_plan(&text).with_context(|| plan.display().to_string())?;
        if let Some(exclude) = args.exclude.as_deref().map(split_patterns) {
            for step in &mut steps {
                step.exclude
                    .get_or_insert_with(Vec::new)
                    .extend(exclude.clone());
            }
        }
        return Ok(steps);
    }
    let method: MethodName = args.method.as_deref().unwrap_or_default().parse()?;
    let step = Step {
        params: args.params.as_deref().map(split_patterns),
        exclude: args.exclude.as_deref().map(split_patterns),
        transformer: false,
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
        // This binary is linked without libtorch's CUDA backend (CPU runs do not load it).
        tch_prune::backend::load_cuda()
            .map_err(|why| anyhow::anyhow!("device '{name}' is not available: {why}"))?;
        if !tch::Cuda::is_available() || i as i64 >= tch::Cuda::device_count() {
            bail!("device '{name}' is not available on this machine");
        }
    }
    Ok(device)
}

fn prune(args: PruneArgs, show: bool) -> Result<()> {
    let ranks = stream::Ranks::join()?;
    let result = prune_as(args, show, ranks.as_ref());
    if let (Err(e), Some(ranks)) = (&result, &ranks) {
        ranks.failed(e);
    }
    result
}

/// [`prune`], as one of `ranks` when there are several.
fn prune_as(args: PruneArgs, show: bool, ranks: Option<&stream::Ranks>) -> Result<()> {
    // Before anything is read: a run that fails writes nothing, and what it may not replace
    // it never touches.
    // A model folder (or a shard index) goes to a new folder, checked (new or empty) here, not
    // at the final rename after the whole output is written.
    let io = folder::Io::resolve(
        &args.input,
        args.output.as_deref().filter(|_| !args.dry_run),
    )?;
    let output = io.output.clone();
    if io.folder.is_none() && !args.dry_run {
        outputs::check(&args.input, Some(&output), args.state_out.as_deref())?;
    } else if let Some(state) = args.state_out.as_ref().filter(|_| !args.dry_run) {
        outputs::check_other(&io.weights, state, "--state-out")?;
    }
    if !args.dry_run {
        // No destination replaces a file the run reads: a shard, a file of the input folder, the
        // plan, the calibration inputs. `-o` may name a model file (it is then pruned in place);
        // a folder's `-o` is a new or empty folder, checked above.
        let beside: Vec<PathBuf> = args.plan.iter().chain(&args.calibration).cloned().collect();
        if io.folder.is_none() {
            outputs::check_not_read(&beside, &output, "-o")?;
        }
        if let Some(state) = &args.state_out {
            let read = [io.read_files()?, beside].concat();
            outputs::check_not_read(&read, state, "--state-out")?;
        }
    }
    // New outputs take the permission bits of the weights they are made from (a replaced file
    // keeps its own): a private model pruned stays private.
    let weights = io.weight_files()?;
    tch_prune::checkpoint::with_permissions_of(&weights, || {
        prune_checked(args, io, output, show, ranks)
    })
}

/// [`prune_as`] once its input and destinations are checked.
fn prune_checked(
    args: PruneArgs,
    io: folder::Io,
    output: PathBuf,
    show: bool,
    ranks: Option<&stream::Ranks>,
) -> Result<()> {
    if calibrated::wanted(&args) {
        if ranks.is_some() {
            bail!("wanda and sparsegpt run in one process: launch it without torchrun (WORLD_SIZE unset or 1)");
        }
        if args.dry_run {
            bail!("--dry-run lists what the magnitude methods select; wanda and sparsegpt prune the linear layers forward calls (--params narrows them), listed in their summary");
        }
        return calibrated::run(args, &output, show);
    }
    let mut steps = steps(&args)?;
    let transformer = io
        .folder
        .as_ref()
        .is_some_and(|f| f.dir.join("config.json").is_file());
    for step in &mut steps {
        step.transformer = transformer;
    }
    if args.dry_run {
        return dry_run(&io, &steps, show, policy(args.trust_code));
    }
    let device = device(&args.device)?;
    let why_in_memory = match stream::prune(&args, &steps, &io, ranks)? {
        stream::Outcome::Streamed(summary) => {
            println!("{summary}");
            return Ok(());
        }
        stream::Outcome::InMemory(reason) => reason,
    };
    let policy = policy(args.trust_code);
    let index = match io.is_sharded() {
        true => Some(ShardIndex::read(&io.weights)?),
        false => None,
    };
    let model = match &index {
        Some(index) => {
            folder::check_memory(index)?;
            ModelFile::open_sharded(index, device)?
        }
        None => quiet::quietly(show, || ModelFile::open_with(&io.weights, device, policy))?,
    };
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

    plan::print_warnings(&selections, &parameters);
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

    // Taken before `remove_all` (which releases `_orig`), written with the model. Boolean masks
    // are converted to their weight's dtype one at a time, as each is copied to the host for
    // writing (on a GPU, no memory of the converted masks' size).
    let state = args
        .state_out
        .as_ref()
        .map(|path| (path, model.reparametrized_entries(&pruner)));
    pruner.remove_all()?;
    let save = |dest: &Path| -> Result<()> {
        match &index {
            Some(index) => {
                std::fs::create_dir(dest)
                    .with_context(|| format!("{}: cannot write", dest.display()))?;
                Ok(model.save_sharded(dest, index, &pruner)?)
            }
            None => Ok(quiet::quietly(show, || model.save(dest, &pruner))?),
        }
    };
    let write_state = || -> Result<()> {
        if let Some((path, state)) = &state {
            outputs::write_state(path, state)?;
        }
        Ok(())
    };
    if io.folder.is_some() {
        // The folder is put in place whole by its own rename, then the state is written: a
        // failure writing the state removes the folder this run created.
        io.write(save)?;
        if let Err(e) = write_state() {
            let _ = std::fs::remove_dir_all(&io.output);
            return Err(e);
        }
    } else {
        // Both outputs or neither: a failure writing the state leaves no pruned model behind.
        write_all_or_nothing(|| -> Result<()> {
            save(&output)?;
            write_state()
        })?;
    }
    let report = report_of(&model, &pruner)?;
    println!(
        "pruned {} tensors to {:.2}% sparsity ({:.2}% of all {} elements are zero); wrote {} (in memory: {why_in_memory}){}",
        pruned.len(),
        100.0 * report.sparsity_of(&pruned),
        100.0 * report.sparsity,
        report.numel,
        io.output.display(),
        io.carried_summary()
    );
    Ok(())
}

/// `--dry-run`: each step's selection, with shapes and dtypes read from the file's headers where
/// its format has them (safetensors, `torch.save` zips: nothing is read into memory), else from
/// the loaded model.
fn dry_run(io: &folder::Io, steps: &[Step], show: bool, policy: CodePolicy) -> Result<()> {
    let headers = io.is_sharded()
        || matches!(
            tch_prune::checkpoint::Format::detect(&io.weights)?,
            tch_prune::checkpoint::Format::Safetensors | tch_prune::checkpoint::Format::TorchZip
        );
    let streamed = headers.then(|| StreamedModel::open(&io.weights));
    let (parameters, buffers, shapes) = match streamed {
        Some(Ok(model)) => (model.parameters(), model.buffers(), model.shapes()),
        Some(Err(e)) if io.is_sharded() => return Err(e.into()),
        _ => {
            let model = quiet::quietly(show, || {
                ModelFile::open_with(&io.weights, Device::Cpu, policy)
            })?;
            let vars = model.var_store().variables();
            let shapes = model
                .parameters()
                .iter()
                .filter_map(|(n, _)| vars.get(n).map(|t| (n.clone(), t.size(), t.kind())))
                .collect();
            (model.parameters(), model.buffers(), shapes)
        }
    };
    let shape_of: HashMap<&str, (&Vec<i64>, tch::Kind)> = shapes
        .iter()
        .map(|(n, s, k)| (n.as_str(), (s, *k)))
        .collect();
    let mut selections = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let names = step
            .select(&parameters, &buffers)
            .with_context(|| format!("step {}", i + 1))?;
        let numel: i64 = names
            .iter()
            .filter_map(|n| shape_of.get(n.as_str()))
            .map(|(s, _)| s.iter().product::<i64>())
            .sum();
        println!(
            "step {} ({}): {} tensors, {numel} elements",
            i + 1,
            step.method,
            names.len()
        );
        for name in &names {
            match shape_of.get(name.as_str()) {
                Some((shape, kind)) => println!("  {name}  {shape:?}  {kind:?}"),
                None => println!("  {name}"),
            }
        }
        if step.params.is_none() && step.transformer {
            let left: Vec<&str> = parameters
                .iter()
                .filter(|(n, d)| n.ends_with("weight") && *d >= 2)
                .map(|(n, _)| n.as_str())
                .filter(|n| plan::is_embedding_or_head(n))
                .collect();
            if !left.is_empty() {
                println!(
                    "  left out by default (a model folder's embedding tables and output head): {}",
                    left.join(", ")
                );
            }
        }
        selections.push(names);
    }
    plan::print_warnings(&selections, &parameters);
    println!("dry run: nothing was pruned or written");
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

fn report(
    input: &Path,
    json: bool,
    svg: Option<&Path>,
    policy: CodePolicy,
    show: bool,
) -> Result<()> {
    // A model folder is reported by its weights.
    let weights = match input.is_dir() {
        true => HfFolder::open(input)?.weights_path().to_path_buf(),
        false => input.to_path_buf(),
    };
    let input = weights.as_path();
    let sharded = ShardIndex::locate(input).is_some();
    if !sharded {
        outputs::check(input, None, None)?;
    }
    if let Some(svg) = svg {
        outputs::check_other(input, svg, "--svg")?;
        if sharded {
            let read = folder::Io::resolve(input, None)?.read_files()?;
            outputs::check_not_read(&read, svg, "--svg")?;
        }
    }
    // Counted over a memory map where that gives the in-memory report (any size, sharded
    // checkpoints); TorchScript, tied weights and checkpoints saved pruned are read in memory.
    let streamed = match StreamedModel::open(input) {
        Ok(model) if sharded || model.unsupported(&[]).is_none() => Some(model.report()?),
        Err(e) if sharded => return Err(e.into()),
        _ => None,
    };
    let report = match streamed {
        Some(report) => report,
        None => {
            let model = quiet::quietly(show, || ModelFile::open_with(input, Device::Cpu, policy))?;
            report_of(&model, &model.pruner()?)?
        }
    };
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
    // What a `--device cuda` run would have: the backend loaded on demand.
    let loaded = tch_prune::backend::load_cuda();
    let mut backend = tch_prune::backend::Backend::detect();
    if let (Err(why), false) = (loaded, backend.cuda_loaded) {
        backend.cuda_unavailable_reason = Some(why);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&backend)?);
    } else {
        println!("{backend}");
    }
    Ok(())
}
