//! Shared by the integration tests: the real PyTorch to compare against, and small helpers.
// Each test binary (an area of tests/) uses part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

/// The longest any process a test starts may run. A process that hangs (a rank waiting for a
/// peer, a store nobody answers) fails its test with what it printed, instead of stalling the
/// suite until CI gives up on it without saying which test hung.
pub const CHILD_LIMIT: Duration = Duration::from_secs(600);

/// Runs `command` to its end with its output captured and no input; kills it and fails the
/// test, showing what it printed, past [`CHILD_LIMIT`].
pub fn output_within(command: &mut Command) -> Output {
    let what = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    wait_within(child, &what)
}

/// Waits for a started `child` (its output piped) as [`output_within`] does.
pub fn wait_within(mut child: Child, what: &str) -> Output {
    // Read on threads, so that a child printing more than a pipe holds never blocks.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            break status;
        }
        if start.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!(
                "{what} ran for over {} s and was killed; it printed:\n{}",
                CHILD_LIMIT.as_secs(),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// The Python that has torch 2.13 (set by `make test` through scripts/torch-env.sh).
///
/// When it is absent, a test that compares with PyTorch is skipped, and the first skip in a
/// test binary prints one line on the terminal; with `TCH_PRUNE_REQUIRE_PYTHON=1` (set by the
/// Makefile and CI) it fails instead, so that a suite cannot pass having compared nothing.
pub fn python() -> Option<PathBuf> {
    let path = std::env::var_os("TCH_PRUNE_PYTHON").map(PathBuf::from);
    let why = match &path {
        Some(path) if path.exists() => return path.clone().into(),
        Some(path) => format!("TCH_PRUNE_PYTHON={} does not exist", path.display()),
        None => "TCH_PRUNE_PYTHON is not set".to_string(),
    };
    if python_required() {
        panic!(
            "{why}, and TCH_PRUNE_REQUIRE_PYTHON is set: this test compares with PyTorch \
             (run it through `make test`, or point TCH_PRUNE_PYTHON at a Python with torch 2.13)"
        );
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        // Straight to stderr: libtest captures `eprintln!` of passing tests, and a skip must show.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {why}: the comparisons with PyTorch in {} are skipped \
             (`make test` runs them; TCH_PRUNE_REQUIRE_PYTHON=1 makes this an error)",
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default()
        );
    });
    None
}

/// Whether `TCH_PRUNE_REQUIRE_PYTHON` asks that every comparison with PyTorch runs.
pub fn python_required() -> bool {
    std::env::var("TCH_PRUNE_REQUIRE_PYTHON").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Runs a Python script with torch available; panics with its stderr if it fails.
/// Returns None when no Python torch is configured (see [`python`]).
pub fn run_python(script: &str, args: &[&Path]) -> Option<String> {
    run_python_env(script, args, &[])
}

/// [`run_python`] with no GPU visible to PyTorch (`CUDA_VISIBLE_DEVICES` empty), as on a
/// machine without one, whatever this machine has.
pub fn run_python_without_gpu(script: &str, args: &[&Path]) -> Option<String> {
    run_python_env(script, args, &[("CUDA_VISIBLE_DEVICES", "")])
}

/// [`run_python`] with extra environment variables.
pub fn run_python_env(script: &str, args: &[&Path], env: &[(&str, &str)]) -> Option<String> {
    let python = python()?;
    // From a file, not `-c`: TorchScript's compiler reads class sources through `inspect`.
    let mut file = tempfile::Builder::new()
        .suffix(".py")
        .tempfile()
        .expect("temporary script");
    std::io::Write::write_all(&mut file, script.as_bytes()).expect("write script");
    let out = output_within(
        Command::new(python)
            .arg(file.path())
            .args(args)
            .env("OMP_NUM_THREADS", "1")
            .envs(env.iter().copied()),
    );
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Exact equality of two float tensors' bit patterns (the signs of zeros and NaNs included).
pub fn assert_bits(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.kind(), b.kind(), "{what}: dtypes differ");
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let int = match a.kind() {
        tch::Kind::Double => tch::Kind::Int64,
        tch::Kind::Float => tch::Kind::Int,
        _ => tch::Kind::Int16,
    };
    let (a, b) = (a.contiguous(), b.contiguous());
    assert!(
        a.view_dtype(int).equal(&b.view_dtype(int)),
        "{what}: bits differ\nleft:  {a}\nright: {b}"
    );
}

/// Bitwise equality of two tensors of the same dtype, -0.0 counted as 0.0 (PyTorch keeps the
/// sign of pruned negative values, and so do we, but comparisons should not depend on it).
pub fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    assert_eq!(a.kind(), b.kind(), "{what}: dtypes differ");
    let a = a.to_device(tch::Device::Cpu);
    let b = b.to_device(tch::Device::Cpu);
    let a = if a.is_floating_point() { &a + 0.0 } else { a };
    let b = if b.is_floating_point() { &b + 0.0 } else { b };
    let equal = a
        .to_kind(tch::Kind::Double)
        .eq_tensor(&b.to_kind(tch::Kind::Double));
    let nan_both = if a.is_floating_point() {
        a.isnan().logical_and(&b.isnan())
    } else {
        a.zeros_like().to_kind(tch::Kind::Bool)
    };
    let ok = equal.logical_or(&nan_both).all().int64_value(&[]) == 1;
    assert!(ok, "{what}: values differ\nleft:  {a}\nright: {b}");
}

/// A fresh temporary folder for a test's files.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary folder")
}

/// libtorch's random generator is global and a binary's tests run in parallel: a test that
/// seeds it, or draws from it, holds this for its whole run, so that a seed gives the draws it
/// promises whatever else is running.
pub fn generator() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

pub mod cuda;
pub mod moves;
pub mod parity;
pub mod ranks;

/// A `tch-prune` command line, built up and then run: the one way the tests assemble one.
/// Paths and values are passed as they are; [`Cli::flags`] splits a string of flags at spaces,
/// as a shell would: `Cli::prune(&input, &output).flags("--method l1-unstructured --amount
/// 0.3").ok()`.
#[derive(Clone, Debug, Default)]
pub struct Cli {
    args: Vec<std::ffi::OsString>,
}

impl Cli {
    /// `tch-prune SUBCOMMAND`.
    pub fn new(subcommand: &str) -> Cli {
        Cli::default().arg(subcommand)
    }

    /// `tch-prune prune INPUT -o OUTPUT`.
    pub fn prune(input: &Path, output: &Path) -> Cli {
        Cli::new("prune").arg(input).arg("-o").arg(output)
    }

    /// One more argument, as it is (a path, a name, a value that holds spaces).
    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Cli {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More arguments, each as it is.
    pub fn args<S: AsRef<std::ffi::OsStr>>(self, args: impl IntoIterator<Item = S>) -> Cli {
        args.into_iter().fold(self, Cli::arg)
    }

    /// `flags` split at spaces: flags and values that hold none.
    pub fn flags(self, flags: &str) -> Cli {
        self.args(flags.split_whitespace())
    }

    /// `NAME VALUE` where there is a value; nothing where there is none.
    pub fn option(self, name: &str, value: Option<impl ToString>) -> Cli {
        match value {
            Some(value) => self.arg(name).arg(value.to_string()),
            None => self,
        }
    }

    /// The command, not yet run (for a test that waits for it or signals it itself).
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tch-prune"));
        command.args(&self.args);
        command
    }

    /// Runs it to the end.
    pub fn run(&self) -> Output {
        output_within(&mut self.command())
    }

    /// Runs it, which must succeed; its standard output.
    pub fn ok(&self) -> String {
        let out = self.run();
        assert!(
            out.status.success(),
            "{self} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl std::fmt::Display for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tch-prune")?;
        for arg in &self.args {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// Runs this crate's `tch-prune` binary with `args` (a fixed list; [`Cli`] builds the others).
pub fn cli(args: &[&str]) -> Output {
    Cli::default().args(args).run()
}

/// [`cli`], which must succeed; its standard output.
pub fn ok(args: &[&str]) -> String {
    Cli::default().args(args).ok()
}

/// The file's tensor names in order, as `tch-prune report --json` lists them.
pub fn tensor_order(path: &Path) -> Vec<String> {
    let report: serde_json::Value =
        serde_json::from_str(&Cli::new("report").arg(path).arg("--json").ok()).unwrap();
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `tch-prune prune INPUT` with `flags` twice into `dir`, as the CLI chooses and with
/// `--in-memory` (outputs named with the input's extension); asserts that the second run was in
/// memory and returns both outputs' bytes and what the first run said.
pub fn both_paths(input: &Path, flags: &[&str], dir: &Path) -> (Vec<u8>, Vec<u8>, String) {
    let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("out");
    let chosen = dir.join(format!("chosen.{ext}"));
    let in_memory = dir.join(format!("in-memory.{ext}"));
    let said = Cli::prune(input, &chosen).args(flags).ok();
    let said_in_memory = Cli::prune(input, &in_memory)
        .arg("--in-memory")
        .args(flags)
        .ok();
    assert!(
        said_in_memory.contains("(in memory: --in-memory"),
        "{said_in_memory}"
    );
    let read = |p: &Path| std::fs::read(p).expect("read output");
    (read(&chosen), read(&in_memory), said)
}

/// [`both_paths`] where the CLI must choose to stream: asserts that it did and that both runs
/// wrote the same bytes (`what` names the case in a failure); returns those bytes.
pub fn streamed_as_in_memory(input: &Path, flags: &[&str], dir: &Path, what: &str) -> Vec<u8> {
    let (streamed, in_memory, said) = both_paths(input, flags, dir);
    assert!(
        said.contains("streamed from a memory map"),
        "{what} {flags:?}: {said}"
    );
    assert!(
        streamed == in_memory,
        "{what} {flags:?}: the streamed output differs from the in-memory one"
    );
    streamed
}

/// The peak anonymous memory of a run of `cli` that must succeed and stream (see
/// [`peak_anon`]).
pub fn streamed_peak(cli: &Cli) -> u64 {
    let (peak, output) = peak_anon(cli);
    assert!(
        output.status.success(),
        "{cli}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("streamed"));
    peak
}

/// Runs tch-prune, sampling its `RssAnon` from /proc every millisecond; returns the peak in
/// bytes and the output.
pub fn peak_anon(cli: &Cli) -> (u64, Output) {
    let mut child = cli
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tch-prune");
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    (peak, child.wait_with_output().expect("output"))
}

/// A folder's entry names, sorted.
pub fn folder_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `cli` and sends it SIGKILL as soon as `ready(pid)` holds (asked every
/// 200 µs); returns whether it was killed, rather than having ended first.
pub fn kill_when(cli: &Cli, ready: impl Fn(u32) -> bool) -> bool {
    let mut child = cli
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tch-prune");
    let mut killed = false;
    for _ in 0..100_000 {
        if ready(child.id()) {
            child.kill().expect("kill");
            killed = true;
            break;
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let _ = child.wait();
    killed
}

/// The runs of the streaming tests (tests/streaming*.rs), each as the flags of a `prune`: every
/// method the streaming path takes, then a plan of disjoint steps (written to `dir`).
pub fn stream_runs(dir: &Path) -> Vec<Vec<String>> {
    const RUNS: &[&str] = &[
        "--method l1-unstructured --amount 0.5 --global",
        "--method l1-unstructured --amount 0.3",
        "--method l1-unstructured --amount 17",
        "--method random-unstructured --amount 0.4 --seed 7",
        "--method ln-structured --amount 2 --n 2 --dim 0",
        "--method ln-structured --amount 0.5 --n inf --dim -1",
        "--method random-structured --amount 0.5 --dim 1 --seed 3",
        "--method identity",
        "--method l1-unstructured --amount 0.6 --global --params *.weight,*.bias",
    ];
    const PLAN: &str = r#"[
  {"params": ["layers.*.weight", "embed.weight"], "method": "l1-unstructured", "amount": 0.7, "global": true},
  {"params": "head.weight", "method": "ln-structured", "amount": 3, "n": 1, "dim": 0},
  {"params": "*.bias", "method": "l1-unstructured", "amount": 0.25}
]"#;
    let plan = dir.join("plan.json");
    std::fs::write(&plan, PLAN).expect("write plan");
    let mut runs: Vec<Vec<String>> = RUNS
        .iter()
        .map(|r| r.split(' ').map(str::to_string).collect())
        .collect();
    runs.push(vec![
        "--plan".into(),
        plan.to_str().expect("UTF-8 path").into(),
    ]);
    runs
}

/// The tensors of a large test model: `tensors` f32 weights `<prefix>layers.<i>.weight` of
/// `numel` values each (a multiple of 1024), for the streamed writers.
pub fn large_headers(
    prefix: &str,
    tensors: usize,
    numel: usize,
) -> Vec<tch_prune::checkpoint::TensorHeader> {
    (0..tensors)
        .map(|i| tch_prune::checkpoint::TensorHeader {
            name: format!("{prefix}layers.{i:03}.weight"),
            kind: tch::Kind::Float,
            shape: vec![(numel / 1024) as i64, 1024],
        })
        .collect()
}

/// Prunes `large` and `small` (a tiny model: the process's own baseline, libtorch and the
/// binary) to `out` by streaming, with L1 global and per tensor, and asserts that the peak
/// anonymous memory of the large run exceeds the small one's by less than `budget_mb` MiB.
pub fn assert_streamed_memory_under(small: &Path, large: &Path, out: &Path, budget_mb: u64) {
    for method in [
        "--method l1-unstructured --amount 0.5 --global",
        "--method l1-unstructured --amount 0.5",
    ] {
        let run = |input: &Path| streamed_peak(&Cli::prune(input, out).flags(method));
        let baseline = run(small);
        let peak = run(large);
        let extra = peak.saturating_sub(baseline);
        eprintln!(
            "{method}: {}, peak RssAnon {:.1} MB, {:.1} MB over a tiny model's",
            large.display(),
            peak as f64 / 1e6,
            extra as f64 / 1e6
        );
        assert!(
            extra < budget_mb << 20,
            "{method}: {extra} bytes of anonymous memory over the baseline, budget {budget_mb} MiB"
        );
    }
}
