//! Hostile and careless input against the `tch-prune` CLI, one table row per attack (issue 11).
//!
//! The inputs are written at test time by tests/py/hostile.py (PyTorch's own writers, and zips
//! rewritten where PyTorch would not write the attack). Each row runs the CLI in a fresh folder
//! and asserts: the exit status; stderr is one line holding the row's key words; no file is
//! written (beside what the row expects); the input is unchanged; the victim file that the
//! TorchScript payloads overwrite is unchanged; and, for the bombs, the peak memory of the
//! process (`wait4`'s maximum resident set) stays under a ceiling.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What the payloads write into the victim when they run.
const VICTIM_TEXT: &[u8] = b"victim: untouched\n";

struct Fixtures {
    _dir: tempfile::TempDir,
    gen: PathBuf,
    victim: PathBuf,
}

/// The generated inputs, made once per test binary; `None` (and the tests fail) without PyTorch.
fn fixtures() -> &'static Fixtures {
    static FIXTURES: std::sync::OnceLock<Fixtures> = std::sync::OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = common::tempdir();
        let gen = dir.path().join("gen");
        let victim = dir.path().join("victim.txt");
        let script = include_str!("../py/hostile.py");
        let out = common::run_python(script, &[&gen, &victim]);
        assert!(
            out.is_some(),
            "these tests need PyTorch to write their inputs: set TCH_PRUNE_PYTHON (make test does)"
        );
        Fixtures {
            _dir: dir,
            gen,
            victim,
        }
    })
}

/// One run of the CLI, and what came of it.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
    /// Peak resident memory, in MiB.
    peak_mib: u64,
}

/// The binary under test: this crate's, or the one `TCH_PRUNE_BIN` names (to run the table
/// against another build, e.g. one from before a fix, and see which rows it fails).
fn binary() -> PathBuf {
    std::env::var_os("TCH_PRUNE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tch-prune")))
}

/// Runs the CLI with `args`, waiting for it with `wait4` to learn its peak memory.
fn run(args: &[String], work: &Path) -> Run {
    let (out, err) = (work.join(".stdout"), work.join(".stderr"));
    // Waited for by `wait4` (which also reports its peak memory), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(binary())
        .args(args)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start tch-prune");
    let (status, peak_kib) = wait4(child.id());
    let read = |p: &Path| {
        let text = String::from_utf8_lossy(&std::fs::read(p).expect("read")).into_owned();
        std::fs::remove_file(p).expect("remove");
        text
    };
    Run {
        status,
        stdout: read(&out),
        stderr: read(&err),
        peak_mib: peak_kib / 1024,
    }
}

/// Waits for the child `pid`; its exit status (128 + signal if killed) and peak memory in KiB.
fn wait4(pid: u32) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid as libc::pid_t, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, usage.ru_maxrss as u64)
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("list folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// One attack: the arguments (with `{gen}` for the inputs' folder and `{work}` for the run's
/// own), the expected status and key words, and what the run may leave in its folder.
struct Row {
    name: &'static str,
    args: &'static str,
    /// Files of the run's folder made before the run (`-o` targets, links), by `setup`.
    setup: fn(&Path),
    status: i32,
    /// Words stderr's one line must hold (empty: stderr must be empty).
    words: &'static [&'static str],
    /// Files the run may write into its folder.
    writes: &'static [&'static str],
    /// A bomb: the peak memory must stay within READ_MARGIN_MIB of a small valid read's.
    bomb: bool,
    /// The payload must run (rows that pass --trust-code to a file that has one), or must not.
    trusted: bool,
}

const NO_SETUP: fn(&Path) = |_| {};

fn row(name: &'static str, args: &'static str, status: i32, words: &'static [&'static str]) -> Row {
    Row {
        name,
        args,
        setup: NO_SETUP,
        status,
        words,
        writes: &[],
        bomb: false,
        trusted: false,
    }
}

/// Makes `null` in `work`: a character device like /dev/null (root only), else a pipe.
fn make_device(work: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let path = work.join("null");
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mknod only reads it.
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    if made != 0 {
        assert!(Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo")
            .success());
    }
}

/// What a failing read may add to the peak memory of the CLI reading a small valid file
/// (libtorch's own, CUDA libraries included, measured in the same run): little.
const READ_MARGIN_MIB: u64 = 150;

/// The peak memory of the CLI reporting on a small committed checkpoint.
fn baseline_peak_mib() -> u64 {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats/mlp.pt");
    let work = common::tempdir();
    let out = run(
        &["report".into(), fixture.display().to_string()],
        work.path(),
    );
    assert_eq!(
        out.status,
        0,
        "report on {}: {}",
        fixture.display(),
        out.stderr
    );
    out.peak_mib
}

fn rows() -> Vec<Row> {
    vec![
        // 1. TorchScript code from the file never runs by default.
        row("setstate, report", "report {gen}/setstate.pt", 1, &["__setstate__", "refused", "--trust-code"]),
        row("setstate, prune", "prune {gen}/setstate.pt -o out.pt --method l1-unstructured --amount 0.5", 1, &["__setstate__", "--trust-code"]),
        row("from_file in forward", "prune {gen}/forward_from_file.pt -o out.pt --method l1-unstructured --amount 0.5", 1, &["'from_file'", "line"]),
        row("custom operator namespace", "report {gen}/custom_op.pt", 1, &["'evilext'"]),
        Row {
            trusted: true,
            ..row("setstate trusted: runs, libtorch's warning hidden", "report {gen}/setstate.pt --trust-code", 0, &[])
        },
        Row {
            trusted: true,
            ..row("setstate trusted, warnings asked for", "report {gen}/setstate.pt --trust-code --libtorch-warnings", 0, &["Warning", "quantize_per_tensor"])
        },
        // 2. Small files do not take the machine.
        Row { bomb: true, ..row("pickle bomb", "report {gen}/pickle_bomb.pt", 1, &["data.pkl"]) },
        Row { bomb: true, ..row("deflate bomb", "prune {gen}/deflate_bomb.pt -o out.pt --method l1-unstructured --amount 0.5 --params w", 1, &["data/0"]) },
        Row { bomb: true, ..row("stride-0 expansion", "prune {gen}/stride0.pt -o out.pt --method l1-unstructured --amount 0.5 --params w", 1, &["'w'", "stride"]) },
        Row { bomb: true, ..row("one storage under 256 views", "prune {gen}/shared_views.pt -o out.pt --method l1-unstructured --amount 0.5 --params v*", 1, &["cop"]) },
        // 3. Two readers, two answers.
        row("duplicate storage entry", "report {gen}/dup_storage.pt", 1, &["two entries", "data/0"]),
        row("duplicate data.pkl", "report {gen}/dup_pkl.pt", 1, &["two entries", "data.pkl"]),
        row("duplicate names but for case", "report {gen}/dup_case.pt", 1, &["two entries", "DATA/0"]),
        row("duplicate class definition", "report {gen}/dup_code.pt", 1, &["two entries", "code/__torch__.py"]),
        // 4. Files that are not ours to replace.
        Row {
            setup: |w| std::os::unix::fs::symlink(w.join("target.pt"), w.join("link.pt")).and_then(|_| std::fs::write(w.join("target.pt"), b"target")).expect("setup"),
            writes: &["link.pt", "target.pt"],
            ..row("-o a symlink", "prune {gen}/plain.pt -o link.pt --method l1-unstructured --amount 0.5", 1, &["link.pt", "symbolic link"])
        },
        Row {
            setup: |w| assert!(Command::new("mkfifo").arg(w.join("fifo")).status().expect("mkfifo").success()),
            writes: &["fifo"],
            ..row("-o a pipe", "prune {gen}/plain.pt -o fifo --method l1-unstructured --amount 0.5", 1, &["fifo", "not a regular file"])
        },
        Row {
            // A device node of our own (never the system's: a build from before the fix
            // replaces the node, and as root /dev/null would be replaced); a pipe if this user
            // cannot make devices.
            setup: make_device,
            writes: &["null"],
            ..row("-o a device", "prune {gen}/plain.pt -o null --method l1-unstructured --amount 0.5", 1, &["null", "not a regular file"])
        },
        row("-o a folder", "prune {gen}/plain.pt -o . --method l1-unstructured --amount 0.5", 1, &["not"]),
        row("-o equal to --state-out", "prune {gen}/plain.pt -o x.pt --state-out x.pt --method l1-unstructured --amount 0.5", 1, &["x.pt", "same file"]),
        row("--state-out equal to the input", "prune {gen}/plain.pt -o out.pt --state-out {gen}/plain.pt --method l1-unstructured --amount 0.5", 1, &["plain.pt", "input"]),
        row("--state-out into a missing folder", "prune {gen}/plain.pt -o out.pt --state-out missing/s.safetensors --method l1-unstructured --amount 0.5", 1, &["missing", "does not exist"]),
        row("-o into a missing folder", "prune {gen}/plain.pt -o missing/out.pt --method l1-unstructured --amount 0.5", 1, &["missing", "does not exist"]),
        row("--state-out fails after the model is written", "prune {gen}/metadata_key.pt -o out.pt --state-out s.safetensors --method l1-unstructured --amount 0.5", 1, &["s.safetensors", "__metadata__"]),
        row("input a folder", "report {gen}", 1, &["not a regular file"]),
        // 5. Names of any valid length.
        Row {
            writes: &["LONG"],
            ..row("a 250-byte output name", "prune {gen}/plain.pt -o LONG --method l1-unstructured --amount 0.5", 0, &[])
        },
        // 6. Error lines that help.
        row("quantized TorchScript", "report {gen}/quantized.pt", 1, &["quantized", "not supported"]),
        row("quantized TorchScript, trusted", "report {gen}/quantized.pt --trust-code", 1, &["quantized", "not supported"]),
        row("libtorch message after a newline", "report {gen}/unknown_op.pt", 1, &["cannot load as TorchScript: Unknown builtin op"]),
        row("100 MB pattern", "prune {gen}/plain.pt -o out.pt --plan {gen}/long_pattern.json", 1, &["matches no parameter", "xxx…"]),
        row("safetensors header past the end", "report {gen}/header_past_end.safetensors", 1, &["safetensors", "past the end"]),
        Row { writes: &["out.pt"], ..row("--seed -1", "prune {gen}/plain.pt -o out.pt --method random-unstructured --amount 0.5 --seed -1", 0, &[]) },
        row("--amount -0.1", "prune {gen}/plain.pt -o out.pt --method l1-unstructured --amount -0.1", 1, &["invalid amount -0.1"]),
        // 7. Selecting nothing is an error, global or not.
        row("selecting nothing", "prune {gen}/only_1d.pt -o out.pt --method l1-unstructured --amount 0.5", 1, &["nothing to prune", "--params"]),
        row("selecting nothing, --global", "prune {gen}/only_1d.pt -o out.pt --method l1-unstructured --amount 0.5 --global", 1, &["nothing to prune", "--params"]),
    ]
}

/// The bytes of every file an attack could touch, to check that none changed.
fn snapshot(paths: &[&Path]) -> Vec<Option<Vec<u8>>> {
    paths.iter().map(|p| std::fs::read(p).ok()).collect()
}

#[test]
fn every_attack_is_refused_cleanly() {
    let fx = fixtures();
    let long_name = "n".repeat(250);
    let mut failures = Vec::new();
    let read_ceiling = baseline_peak_mib() + READ_MARGIN_MIB;
    for row in rows() {
        std::fs::write(&fx.victim, VICTIM_TEXT).expect("victim");
        let work = common::tempdir();
        (row.setup)(work.path());
        let before_names = names_in(work.path());
        let text = row
            .args
            .replace("{gen}", &fx.gen.display().to_string())
            .replace("LONG", &long_name);
        let args: Vec<String> = text.split(' ').map(String::from).collect();
        let inputs: Vec<PathBuf> = args
            .iter()
            .filter(|a| a.starts_with(&fx.gen.display().to_string()) && Path::new(a).is_file())
            .map(PathBuf::from)
            .collect();
        let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        let before = snapshot(&input_refs);
        let out = run(&args, work.path());
        let mut problems = Vec::new();
        if out.status != row.status {
            problems.push(format!("status {} (expected {})", out.status, row.status));
        }
        let lines: Vec<&str> = out.stderr.lines().collect();
        if row.words.is_empty() {
            if !out.stderr.is_empty() {
                problems.push("stderr is not empty".into());
            }
        } else if lines.len() != 1 {
            problems.push(format!("{} stderr lines, not one", lines.len()));
        } else if let Some(missing) = row.words.iter().find(|w| !lines[0].contains(*w)) {
            problems.push(format!("stderr lacks '{missing}'"));
        }
        if out.stderr.len() > 5000 {
            problems.push(format!("stderr is {} bytes long", out.stderr.len()));
        }
        let mut expected: BTreeSet<String> = before_names;
        expected.extend(row.writes.iter().map(|w| w.replace("LONG", &long_name)));
        let after_names = names_in(work.path());
        if !after_names.is_subset(&expected) {
            problems.push(format!(
                "files left: {:?}",
                after_names.difference(&expected).collect::<Vec<_>>()
            ));
        }
        if row.status == 0
            && row
                .writes
                .iter()
                .any(|w| !work.path().join(w.replace("LONG", &long_name)).is_file())
        {
            problems.push("the output was not written".into());
        }
        if snapshot(&input_refs) != before {
            problems.push("an input changed".into());
        }
        let victim = std::fs::read(&fx.victim).unwrap_or_default();
        let ran = victim != VICTIM_TEXT || out.stdout.contains("PAYLOAD");
        if ran != row.trusted {
            problems.push(match ran {
                true => "the payload ran: the victim file changed or it printed".into(),
                false => "--trust-code did not let the payload run".into(),
            });
        }
        if row.bomb {
            let ceiling = read_ceiling;
            if out.peak_mib > ceiling {
                problems.push(format!(
                    "peak memory {} MiB, over {ceiling} MiB",
                    out.peak_mib
                ));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} [stderr: {}]",
                row.name,
                problems.join("; "),
                out.stderr.chars().take(400).collect::<String>().trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Interrupted runs leave no file behind: `SIGINT`, `SIGTERM` and `SIGKILL` at several points
/// of a run that reads, prunes and writes 64 MiB. Each run's folder holds
/// afterwards either nothing or the complete output, never a temporary file.
#[test]
fn interrupted_runs_leave_no_partial_file() {
    let fx = fixtures();
    let input = fx.gen.join("big.safetensors");
    let args = [
        "prune",
        input.to_str().expect("utf-8 path"),
        "-o",
        "out.safetensors",
        "--method",
        "l1-unstructured",
        "--amount",
        "0.5",
    ];
    // How long a whole run takes here, to spread the signals over it.
    let work = common::tempdir();
    let start = std::time::Instant::now();
    let whole = run(&args.map(String::from), work.path());
    assert_eq!(whole.status, 0, "{}", whole.stderr);
    let total = start.elapsed();
    let mut interrupted = 0;
    // The writing comes last and takes a small part of the run: the signals land from 55 % of
    // a whole run's time to a little past its end.
    let points = |n: u32| (0..n).map(move |i| 55 + 50 * i / n);
    let signals = [(libc::SIGINT, 3), (libc::SIGTERM, 10), (libc::SIGKILL, 10)];
    for (signal, percent) in signals
        .iter()
        .flat_map(|&(s, n)| points(n).map(move |p| (s, p)))
    {
        let work = common::tempdir();
        // Waited for by `wait4`, after the signal.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(binary())
            .args(args)
            .current_dir(work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tch-prune");
        std::thread::sleep(total * percent / 100);
        // SAFETY: signals our own child, not yet waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let (status, _) = wait4(child.id());
        let names = names_in(work.path());
        let done: BTreeSet<String> = ["out.safetensors".to_string()].into();
        if status == 0 {
            assert_eq!(
                names, done,
                "signal {signal} at {percent} % after a whole run"
            );
        } else {
            interrupted += 1;
            assert_eq!(status, 128 + signal, "signal {signal} at {percent} %");
            assert!(
                names.is_empty() || names == done,
                "signal {signal} at {percent} % left {names:?}"
            );
        }
    }
    assert!(interrupted > 5, "only {interrupted} runs were interrupted");
}

/// A wrong-shaped custom mask is reported against the tensor, by name.
#[test]
fn a_wrong_shaped_custom_mask_names_its_tensor() {
    use tch::{nn::VarStore, Device, Kind, Tensor};
    let vs = VarStore::new(Device::Cpu);
    let _ =
        (vs.root() / "fc1").var_copy("weight", &Tensor::ones([3, 4], (Kind::Float, Device::Cpu)));
    let pruner = tch_prune::Pruner::new(&vs);
    let mask = Tensor::ones([4, 3], (Kind::Float, Device::Cpu));
    let err = pruner
        .custom_from_mask("fc1.weight", &mask)
        .expect_err("a mask of another shape");
    let text = err.to_string();
    assert!(
        text.contains("'fc1.weight'") && text.contains("[4, 3]"),
        "{text}"
    );
    assert!(!text.contains("the tensor'"), "{text}");
}
