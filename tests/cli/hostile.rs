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
    /// CPU time, user and system, in seconds (what `max_secs` bounds: wall time depends on
    /// what else the machine runs).
    cpu_secs: f64,
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
    let child = limited(Command::new(binary()))
        .args(args)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start tch-prune");
    // A build that hangs on an input (a pipe named as a shard, before issue 20) fails its row
    // instead of hanging the suite.
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let pid = child.id() as libc::pid_t;
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(RUN_LIMIT).is_err() {
            // SAFETY: signals our own child, not yet waited for (the wait is what ends the
            // timeout).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let (status, peak_kib, cpu_secs) = wait4_cpu(child.id());
    let _ = done.send(());
    watchdog.join().expect("watchdog");
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
        cpu_secs,
    }
}

/// The longest a run of the table may take.
const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `command` with its address space limited to 8 GiB: a build that reads `/dev/zero` until
/// memory runs out (before issue 20) fails its row instead of taking the machine.
fn limited(mut command: Command) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: `setrlimit` is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 8 << 30,
                rlim_max: 8 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    command
}

/// Waits for the child `pid`; its exit status (128 + signal if killed) and peak memory in KiB.
fn wait4(pid: u32) -> (i32, u64) {
    let (status, peak, _) = wait4_cpu(pid);
    (status, peak)
}

/// [`wait4`], and the CPU seconds (user and system) the child took.
fn wait4_cpu(pid: u32) -> (i32, u64, f64) {
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
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        code,
        usage.ru_maxrss as u64,
        secs(usage.ru_utime) + secs(usage.ru_stime),
    )
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
    /// The run must take less than this many seconds of CPU (rows about time that grows with
    /// the input).
    max_secs: Option<u64>,
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
        max_secs: None,
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

/// Makes a named pipe at `path`.
fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo")
        .success());
}

/// Writes `model.safetensors.index.json` in `work`, mapping tensor `w` to `shard`.
fn write_index(work: &Path, shard: &str) {
    let index = format!(r#"{{"metadata": {{}}, "weight_map": {{"w": "{shard}"}}}}"#);
    std::fs::write(work.join("model.safetensors.index.json"), index).expect("index");
}

/// A safetensors file holding one f32 tensor `name` of `numel` entries (`[2, numel / 2]`),
/// entry `i` equal to `i`.
fn safetensors_bytes(name: &str, numel: usize) -> Vec<u8> {
    let mut header = format!(
        r#"{{"{name}":{{"dtype":"F32","shape":[2,{}],"data_offsets":[0,{}]}}}}"#,
        numel / 2,
        4 * numel
    )
    .into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend((0..numel).flat_map(|i| (i as f32).to_le_bytes()));
    bytes
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
        row("from_file in forward", "prune {gen}/forward_from_file.pt -o out.pt --method l1-unstructured --amount 0.5", 1, &["'torch.from_file'", "line"]),
        row("custom operator namespace", "report {gen}/custom_op.pt", 1, &["'evilext'"]),
        Row {
            trusted: true,
            ..row("setstate trusted: runs, libtorch's warning hidden", "report {gen}/setstate.pt --trust-code", 0, &[])
        },
        Row {
            trusted: true,
            ..row("setstate trusted, warnings asked for", "report {gen}/setstate.pt --trust-code --libtorch-warnings", 0, &["Warning", "quantize_per_tensor"])
        },
        // Issue 20: the code allow-list. Names in string literals (getattr on a namespace) or
        // behind parentheses reach files past a deny-list; shrink runs forward, report loads.
        row("getattr(torch, 'from_file'), shrink", "shrink {gen}/getattr_from_file.pt -o out.pt --amount 0.5 --input-shape 1,3,8,8", 1, &["getattr_from_file.pt", "line", "namespace 'torch'", "--trust-code"]),
        row("getattr(torch, 'from_file'), report", "report {gen}/getattr_from_file.pt", 1, &["line", "namespace 'torch'", "--trust-code"]),
        row("getattr(torch, 'save'), shrink", "shrink {gen}/getattr_save.pt -o out.pt --amount 0.5 --input-shape 1,3,8,8", 1, &["line", "namespace 'torch'", "--trust-code"]),
        row("getattr(torch, 'save'), report", "report {gen}/getattr_save.pt", 1, &["line", "namespace 'torch'", "--trust-code"]),
        row("getattr(ops.aten, 'from_file'), shrink", "shrink {gen}/getattr_ops_from_file.pt -o out.pt --amount 0.5 --input-shape 1,3,8,8", 1, &["line", "namespace 'ops.aten'", "--trust-code"]),
        row("getattr(ops.aten, 'from_file'), report", "report {gen}/getattr_ops_from_file.pt", 1, &["line", "namespace 'ops.aten'", "--trust-code"]),
        row("(ops)._c10d_functional, shrink", "shrink {gen}/paren_ops.pt -o out.pt --amount 0.5 --input-shape 1,3,8,8", 1, &["line", "namespace 'ops'", "--trust-code"]),
        row("(ops)._c10d_functional, report", "report {gen}/paren_ops.pt", 1, &["line", "namespace 'ops'", "--trust-code"]),
        Row {
            trusted: true,
            writes: &["out.pt"],
            ..row("getattr(torch, 'from_file') trusted: runs", "shrink {gen}/getattr_from_file.pt -o out.pt --amount 0.5 --input-shape 1,3,8,8 --trust-code", 0, &[])
        },
        // Where libtorch reads a file otherwise than a checker might: code in a `# type:`
        // comment, lines joined by a backslash, custom-class objects only data.pkl names,
        // quantized attributes, a zip that is also a flatbuffer module (read first by libtorch).
        row("type comment hides __setstate__, report", "report {gen}/type_comment.pt", 1, &["__setstate__", "--trust-code"]),
        row("type comment hides __setstate__, shrink", "shrink {gen}/type_comment.pt -o out.pt --amount 0.5 --input-shape 1,4", 1, &["__setstate__", "--trust-code"]),
        row("type comment hides forward's from_file, shrink", "shrink {gen}/type_comment_forward.pt -o out.pt --amount 0.5 --input-shape 1,4", 1, &["'torch.from_file'", "line 14"]),
        row("line continuation to a custom class, shrink", "shrink {gen}/continuation.pt -o out.pt --amount 0.5 --input-shape 1,4", 1, &["'profiling'"]),
        row("custom class object only in data.pkl, report", "report {gen}/custom_class_in_pickle.pt", 1, &["mkldnn.ConvOpContext"]),
        row("custom class object only in data.pkl, shrink", "shrink {gen}/custom_class_in_pickle.pt -o out.pt --amount 0.5 --input-shape 1,4", 1, &["mkldnn.ConvOpContext"]),
        row("custom class object only in data.pkl, trusted shrink", "shrink {gen}/custom_class_in_pickle.pt -o out.pt --amount 0.5 --input-shape 1,4 --trust-code", 1, &["mkldnn.ConvOpContext"]),
        row("quantized packed attribute, trusted shrink", "shrink {gen}/packed_attribute.pt -o out.pt --amount 0.5 --input-shape 1,4 --trust-code", 1, &["quantized"]),
        row("zip that is also a flatbuffer module, report", "report {gen}/flatbuffer_zip.pt", 1, &["flatbuffer", "PTMF"]),
        row("zip that is also a flatbuffer module, shrink", "shrink {gen}/flatbuffer_zip.pt -o out.pt --amount 0.5 --input-shape 1,4", 1, &["flatbuffer"]),
        // 2. Small files do not take the machine.
        Row { bomb: true, ..row("pickle bomb", "report {gen}/pickle_bomb.pt", 1, &["data.pkl"]) },
        Row { bomb: true, ..row("deflate bomb", "prune {gen}/deflate_bomb.pt -o out.pt --method l1-unstructured --amount 0.5 --params w", 1, &["data/0"]) },
        Row { bomb: true, ..row("one module under 60000 names of 60 KiB", "report {gen}/wide_prefix.pt", 1, &["dotted names", "more than"]) },
        Row { bomb: true, ..row("24 storages deflated, 288 MiB in all", "report {gen}/deflate_many.pt", 1, &["24 compressed entries", "decompression bomb"]) },
        Row { bomb: true, ..row("24 storages deflated, pruned", "prune {gen}/deflate_many.pt -o out.pt --method l1-unstructured --amount 0.5", 1, &["24 compressed entries", "decompression bomb"]) },
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
        // A folder is a model folder now (issue 25): this one holds three files and no index.
        row("input a folder", "report {gen}", 1, &["not a model folder", "3 safetensors files"]),
        // 5. Names of any valid length.
        Row {
            writes: &["LONG"],
            ..row("a 250-byte output name", "prune {gen}/plain.pt -o LONG --method l1-unstructured --amount 0.5", 0, &[])
        },
        // 6. Error lines that help.
        row("quantized TorchScript", "report {gen}/quantized.pt", 1, &["quantized", "not supported"]),
        row("quantized TorchScript, trusted", "report {gen}/quantized.pt --trust-code", 1, &["quantized", "not supported"]),
        row("a packed quantized object in constants.pkl", "report {gen}/quantized_constants.pt", 1, &["quantized", "not supported"]),
        row("a packed quantized object in a .debug_pkl", "report {gen}/quantized_debug_pkl.pt --trust-code", 1, &["quantized", "not supported"]),
        // The allow-list refuses an unknown operator itself; trusted, libtorch's message shows.
        row("unknown operator", "report {gen}/unknown_op.pt", 1, &["torch.no_such_op", "not an operator"]),
        row("libtorch message after a newline", "report {gen}/unknown_op.pt --trust-code", 1, &["cannot load as TorchScript: Unknown builtin op"]),
        row("100 MB pattern", "prune {gen}/plain.pt -o out.pt --plan {gen}/long_pattern.json", 1, &["matches no parameter", "xxx…"]),
        row("safetensors header past the end", "report {gen}/header_past_end.safetensors", 1, &["safetensors", "past the end"]),
        Row { writes: &["out.pt"], ..row("--seed -1", "prune {gen}/plain.pt -o out.pt --method random-unstructured --amount 0.5 --seed -1", 0, &[]) },
        row("--amount -0.1", "prune {gen}/plain.pt -o out.pt --method l1-unstructured --amount -0.1", 1, &["invalid amount -0.1"]),
        // 7. Selecting nothing is an error, global or not.
        row("selecting nothing", "prune {gen}/only_1d.pt -o out.pt --method l1-unstructured --amount 0.5", 1, &["nothing to prune", "--params"]),
        row("selecting nothing, --global", "prune {gen}/only_1d.pt -o out.pt --method l1-unstructured --amount 0.5 --global", 1, &["nothing to prune", "--params"]),
        // Issue 20: inputs that change or lie
        Row {
            setup: |w| { write_index(w, "shard.safetensors"); mkfifo(&w.join("shard.safetensors")) },
            ..row("a pipe as a shard, report", "report model.safetensors.index.json", 1, &["shard.safetensors", "not a regular file"])
        },
        Row {
            setup: |w| { write_index(w, "shard.safetensors"); mkfifo(&w.join("shard.safetensors")) },
            ..row("a pipe as a shard, prune", "prune model.safetensors.index.json -o out --method l1-unstructured --amount 0.5 --params w", 1, &["shard.safetensors", "not a regular file"])
        },
        Row {
            setup: |w| mkfifo(&w.join("model.safetensors.index.json")),
            ..row("a pipe as the index", "report model.safetensors.index.json", 1, &["index.json", "not a regular file"])
        },
        Row {
            setup: |w| std::os::unix::fs::symlink("/dev/zero", w.join("model.safetensors.index.json")).expect("symlink"),
            bomb: true,
            ..row("the index a link to /dev/zero", "prune model.safetensors.index.json -o out --method l1-unstructured --amount 0.5", 1, &["index.json", "not a regular file"])
        },
        Row { bomb: true, ..row("--plan /dev/zero", "prune {gen}/plain.pt -o out.pt --plan /dev/zero", 1, &["/dev/zero", "not a regular file"]) },
        Row {
            setup: |w| mkfifo(&w.join("plan.json")),
            ..row("--plan a pipe", "prune {gen}/plain.pt -o out.pt --plan plan.json", 1, &["plan.json", "not a regular file"])
        },
        Row {
            setup: |w| std::fs::write(w.join("long.safetensors"), safetensors_bytes(&"n".repeat(70_000), 8)).expect("write"),
            ..row("a 70,000-character tensor name, report", "report long.safetensors", 0, &[])
        },
        Row { writes: &["out.pt"], ..row("--pattern 3:4294967297", "prune {gen}/plain.pt -o out.pt --method nm --pattern 3:4294967297", 0, &[]) },
        Row {
            setup: |w| std::fs::write(w.join("plan.json"), r#"[{"method": "nm", "pattern": "3:4294967297"}]"#).expect("write"),
            writes: &["out.pt"],
            ..row("pattern 3:4294967297 in a plan", "prune {gen}/plain.pt -o out.pt --plan plan.json", 0, &[])
        },
        Row {
            setup: |w| {
                write_index(w, "shard.safetensors");
                std::fs::write(w.join("shard.safetensors"), safetensors_bytes("w", 1 << 16)).expect("write");
                std::fs::create_dir(w.join("empty")).expect("folder");
                std::os::unix::fs::symlink("empty", w.join("out")).expect("symlink");
            },
            ..row("sharded -o a symlink to an empty folder", "prune model.safetensors.index.json -o out --method l1-unstructured --amount 0.5 --params w", 1, &["out", "symbolic link"])
        },
        // Issue 20: running a model's code (`shrink` runs forward: the analysis, timing, --verify).
        row("shrink: a forward that never ends", "shrink {gen}/shrink_loops.pt -o out.pt --amount 0.5 --input-shape 1,3,16,16 --time-limit 3", 1, &["forward", "ran past the 3 s limit", "--time-limit"]),
        Row { bomb: true, ..row("shrink: a forward that allocates 3 GB", "shrink {gen}/shrink_allocates.pt -o out.pt --amount 0.5 --input-shape 1,3,16,16", 1, &["forward", "memory limit", "--memory-limit"]) },
        Row { bomb: true, ..row("shrink: an input shape of 19 GB", "shrink {gen}/shrink_cnn.pt -o out.pt --amount 0.5 --input-shape 1,3,40000,40000", 1, &["--input-shape 1,3,40000,40000", "19200000000 bytes", "--memory-limit"]) },
        row("shrink: --verify fails, nothing written", "shrink {gen}/shrink_noisy.pt -o out.pt --amount 0.5 --input-shape 1,3,16,16 --verify", 1, &["verify", "relative error", "out.pt was not written"]),
        // Kept whole, so nothing shrinks: an error since issue 25, which names why.
        row("shrink: one conv under two names, kept whole", "shrink {gen}/shrink_shared_conv.pt -o out.pt --amount 0.5 --input-shape 1,3,16,16 --verify", 1, &["nothing could be shrunk", "are one tensor", "out.pt was not written"]),
        row("shrink: a forward that rewrites its weights", "shrink {gen}/shrink_mutates.pt -o out.pt --amount 0.5 --input-shape 1,3,16,16 --verify", 1, &["forward changed", "c1.weight"]),
        row("shrink: a forward that rewrites a buffer on its later runs only", "shrink {gen}/shrink_rewrites_buffer_later.pt -o out.pt --amount 0.5 --input-shape 1,3,16,16", 1, &["forward changed", "bn.running_var"]),
        row("shrink: -o the input", "shrink {gen}/shrink_cnn.pt -o {gen}/shrink_cnn.pt --amount 0.5 --input-shape 1,3,16,16 --verify", 1, &["-o names the input file"]),
        Row {
            setup: |w| std::fs::hard_link(fixtures().gen.join("shrink_cnn.pt"), w.join("same.pt")).expect("hard link"),
            writes: &["same.pt"],
            ..row("shrink: -o a hard link to the input", "shrink {gen}/shrink_cnn.pt -o same.pt --amount 0.5 --input-shape 1,3,16,16 --verify", 1, &["same.pt", "-o names the input file"])
        },
        row("shrink: a two-input forward", "shrink {gen}/shrink_two_inputs.pt -o out.pt --amount 0.5 --input-shape 1,3,16,16", 1, &["forward takes 2 inputs", "one tensor", "--input-shape"]),
        row("shrink: an input of the wrong rank", "shrink {gen}/shrink_cnn.pt -o out.pt --amount 0.5 --input-shape 1,3", 1, &["shape [1, 3]", "--input-shape", "Expected 3D (unbatched) or 4D (batched) input to conv2d"]),
        row("shrink: a safetensors file", "shrink {gen}/shrink_cnn.safetensors -o out.pt --amount 0.5", 1, &["shrink needs a TorchScript file", "safetensors"]),
        // Issue 20: archive differentials and scale
        row("code renamed by a Unicode Path field, a decoy in its place", "report {gen}/unicode_code.pt", 1, &["Unicode Path", "__torch__.py", "refused"]),
        row("code renamed by a Unicode Path field, prune", "prune {gen}/unicode_code.pt -o out.pt --method l1-unstructured --amount 0.5", 1, &["Unicode Path", "refused"]),
        row("data/0 renamed by a Unicode Path field, a decoy in its place", "report {gen}/unicode_data.pt", 1, &["Unicode Path", "data/0", "refused"]),
        row("one storage declared as float and as int32", "report {gen}/two_dtypes.pt", 1, &["storage '0'", "float32", "int32"]),
        // Issue 23: torch.export archives (.pt2) get the same treatment.
        Row { writes: &["out.pt2"], ..row(".pt2 pruned", "prune {gen}/pt2_mlp.pt2 -o out.pt2 --method l1-unstructured --amount 0.5", 0, &[]) },
        row(".pt2 weight pickled (a payload that writes the victim)", "prune {gen}/pt2_pickled.pt2 -o out.pt2 --method l1-unstructured --amount 0.5", 1, &["'fc1.weight'", "pickled", "never runs"]),
        row(".pt2 AOTInductor package", "report {gen}/pt2_aoti.pt2", 1, &["AOTInductor", "torch.export.save", "aoti_compile_and_package"]),
        row(".pt2 view past its storage", "report {gen}/pt2_view_past_end.pt2", 1, &["'fc1.weight'", "past the end"]),
        row(".pt2 path_name out of the weights folder", "report {gen}/pt2_path_escape.pt2", 1, &["path_name", "not a file name"]),
        row(".pt2 name given twice in the weights config", "report {gen}/pt2_name_twice.pt2", 1, &["'fc1.weight'", "given twice"]),
        Row { bomb: true, ..row(".pt2 empty storage for 16 GiB of zeros", "prune {gen}/pt2_zeros_bomb.pt2 -o out.pt2 --method l1-unstructured --amount 0.5", 1, &["'fc1.weight'", "refused"]) },
        Row { bomb: true, ..row(".pt2 stride-0 expansion", "prune {gen}/pt2_stride0.pt2 -o out.pt2 --method l1-unstructured --amount 0.5", 1, &["'fc1.weight'", "refused"]) },
        Row { bomb: true, ..row(".pt2 deflate bomb", "prune {gen}/pt2_deflate_bomb.pt2 -o out.pt2 --method l1-unstructured --amount 0.5", 1, &["weight_0", "decompression bomb"]) },
        row(".pt2 duplicate storage entry", "report {gen}/pt2_dup_storage.pt2", 1, &["two entries", "weights/weight_0"]),
        row(".pt2 another archive_format", "report {gen}/pt2_format.pt2", 1, &["archive_format", "pt3"]),
        row(".pt2 two programs", "report {gen}/pt2_two_models.pt2", 1, &["2 programs", "model, other"]),
        row(".pt2 shrink --verify of a program that maps the victim (aten::from_file)", "shrink {gen}/pt2_from_file.pt2 -o out.pt2 --amount 0.5 --verify", 1, &["from_file", "cannot run the program"]),
        row("a half view of a float storage", "report {gen}/half_view.pt", 1, &["storage '0'", "float32", "float16"]),
        Row { bomb: true, max_secs: Some(30), ..row("1M one-element views of one storage", "prune {gen}/views_1m.pt -o out.pt --method l1-unstructured --amount 0.5 --params v*", 1, &["cop", "refused"]) },
        Row { bomb: true, max_secs: Some(30), ..row("one tensor under 1M names", "prune {gen}/tied_1m.pt -o out.pt --method l1-unstructured --amount 0.5 --params t*", 1, &["several names", "refused"]) },
        Row { writes: &["out.pt"], max_secs: Some(40), ..row("50,000 one-element views of one storage", "prune {gen}/views_50k.pt -o out.pt --method l1-unstructured --amount 0.5 --params v* --in-memory", 0, &["50000 one-dimensional tensors"]) },
        Row { writes: &["out.pt"], max_secs: Some(40), ..row("20,000 tensors in memory", "prune {gen}/many_tensors.pt -o out.pt --method l1-unstructured --amount 0.5 --in-memory", 0, &[]) },
    ]
}

/// A digest of every file an attack could touch (its length and a hash of its bytes, read in
/// pieces), to check that none changed. Not the bytes themselves: a child's peak memory as
/// `wait4` reports it includes this process's own high-water mark when it started the child,
/// so holding a 100 MB input here would count against every later row's ceiling.
fn snapshot(paths: &[&Path]) -> Vec<Option<(u64, u64)>> {
    use std::hash::Hasher;
    use std::io::Read;
    paths
        .iter()
        .map(|p| {
            let mut file = std::fs::File::open(p).ok()?;
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            let (mut buf, mut len) = (vec![0u8; 1 << 16], 0u64);
            loop {
                let n = file.read(&mut buf).ok()?;
                if n == 0 {
                    break;
                }
                hasher.write(&buf[..n]);
                len += n as u64;
            }
            Some((len, hasher.finish()))
        })
        .collect()
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
        if let Some(max) = row.max_secs {
            if out.cpu_secs >= max as f64 {
                problems.push(format!("took {:.1} s of CPU, {max} or more", out.cpu_secs));
            }
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

/// What tch-prune reads of each file of the differential corpus (crafted archives and a few
/// valid ones, see tests/py/hostile.py) is what `torch.load(weights_only=True)` reads: the same
/// names, dtypes, shapes and values bit for bit; or both refuse. Where
/// tch-prune is stricter than PyTorch on purpose, the row says why.
#[test]
fn reads_what_torch_load_reads_or_both_refuse() {
    let fx = fixtures();
    // Files PyTorch reads and tch-prune refuses, on purpose.
    let stricter: &[(&str, &str)] = &[
        // torch.load reads the int32 declaration as the float storage, torch.jit.load as int32.
        ("two_dtypes", "declared as"),
        // Names two readers resolve differently: PyTorch reads one entry, other readers (the
        // zip crate, scanners) another; refused rather than guessed.
        ("unicode_data", "Unicode Path"),
        ("dup_storage", "two entries"),
        ("dup_case", "two entries"),
        ("dup_pkl", "two entries"),
    ];
    let corpus = [
        "plain",
        "valid_views",
        "views_50k",
        "unicode_data",
        "two_dtypes",
        "half_view",
        "dup_storage",
        "dup_case",
        "dup_pkl",
    ];
    let mut failures = Vec::new();
    for name in corpus {
        let file = fx.gen.join(format!("{name}.pt"));
        let expected = fx.gen.join("expected");
        let ours = tch_prune::checkpoint::read_torch_zip(&file);
        let theirs = expected.join(format!("{name}.safetensors"));
        match (ours, theirs.is_file()) {
            (Err(_), false) => {}
            (Err(e), true) => match stricter.iter().find(|(n, _)| *n == name) {
                Some((_, words)) if e.to_string().contains(words) => {}
                _ => failures.push(format!("{name}: PyTorch reads it, tch-prune refuses: {e}")),
            },
            (Ok(_), false) => {
                let why = std::fs::read_to_string(expected.join(format!("{name}.refused")))
                    .unwrap_or_default();
                failures.push(format!(
                    "{name}: tch-prune reads it, PyTorch refuses: {why}"
                ));
            }
            (Ok(ours), true) => {
                let mut theirs =
                    tch_prune::checkpoint::read_safetensors(&theirs).expect("expected");
                let mut ours = ours;
                // safetensors keeps no order: compared by name.
                ours.sort_by(|a, b| a.0.cmp(&b.0));
                theirs.sort_by(|a, b| a.0.cmp(&b.0));
                let names = |v: &[(String, tch::Tensor)]| -> Vec<String> {
                    v.iter().map(|(n, _)| n.clone()).collect()
                };
                if names(&ours) != names(&theirs) {
                    failures.push(format!("{name}: other names"));
                    continue;
                }
                for ((n, a), (_, b)) in ours.iter().zip(&theirs) {
                    if a.kind() != b.kind() || a.size() != b.size() || !a.equal(b) {
                        failures.push(format!(
                            "{name}: '{n}' differs ({:?} {:?} against PyTorch's {:?} {:?})",
                            a.kind(),
                            a.size(),
                            b.kind(),
                            b.size()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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

/// Issue 20: a memory-mapped input cut short while a run reads it (one file, and the second
/// shard of a sharded checkpoint) ends in one line naming the file, exit 1, with no output and
/// no temporary file left; it used to end the process by `SIGBUS` (exit 135, nothing said, and
/// a sharded run left its temporary folder). Deterministic: the run is stopped (`SIGSTOP`) as
/// soon as its map of the input appears in `/proc/<pid>/maps`, before it reads the data, the
/// file is truncated, and the run goes on.
#[test]
fn a_mapped_input_cut_short_during_a_run_ends_in_one_line() {
    let one = |w: &Path| {
        let input = w.join("model.safetensors");
        std::fs::write(&input, safetensors_bytes("w", 16 << 20)).expect("write");
        (input, "model.safetensors", "out.safetensors", "w")
    };
    let sharded = |w: &Path| {
        let index =
            r#"{"metadata": {}, "weight_map": {"a": "a.safetensors", "b": "b.safetensors"}}"#;
        std::fs::write(w.join("model.safetensors.index.json"), index).expect("index");
        std::fs::write(w.join("a.safetensors"), safetensors_bytes("a", 8 << 20)).expect("a");
        std::fs::write(w.join("b.safetensors"), safetensors_bytes("b", 8 << 20)).expect("b");
        // Both shards are mapped when the run opens the checkpoint: cut the second.
        (
            w.join("b.safetensors"),
            "model.safetensors.index.json",
            "out",
            "a,b",
        )
    };
    type Make = fn(&Path) -> (PathBuf, &'static str, &'static str, &'static str);
    for (what, make) in [("one file", one as Make), ("sharded", sharded as Make)] {
        let work = common::tempdir();
        let (cut, input, output, params) = make(work.path());
        let before = names_in(work.path());
        let err = work.path().join(".stderr");
        // Waited for by `wait4`, below.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(binary())
            .args(["prune", input, "-o", output, "--method", "l1-unstructured"])
            .args(["--amount", "0.5", "--params", params])
            .current_dir(work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("start tch-prune");
        let pid = child.id() as libc::pid_t;
        let maps = format!("/proc/{pid}/maps");
        let watched = cut.display().to_string();
        let start = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&maps).unwrap_or_default();
            if text.contains(&watched) {
                // SAFETY: signals our own child, not yet waited for.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                break;
            }
            assert!(
                start.elapsed() < RUN_LIMIT,
                "{what}: the run never mapped {watched}"
            );
            std::thread::yield_now();
        }
        std::fs::File::options()
            .write(true)
            .open(&cut)
            .and_then(|f| f.set_len(4096))
            .expect("truncate");
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let (status, _) = wait4(child.id());
        let stderr = std::fs::read_to_string(&err).expect("stderr");
        std::fs::remove_file(&err).expect("remove");
        let cut_name = cut.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(status, 1, "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        assert!(
            stderr.contains(&cut_name) && stderr.contains("changed size"),
            "{what}: {stderr}"
        );
        assert_eq!(names_in(work.path()), before, "{what}: files left");
    }
}

/// `shrink` saves the rewritten model and loads it again; it once did so at a name another user
/// of the temporary folder could predict (`tch-prune-shrink-<pid>-0.pt`), following a link
/// planted there. A shell that knows its pid plants links at that name (and at the folder name
/// without `.pt`) and then becomes the CLI (`exec` keeps the pid): the victim must stay as it was.
#[test]
fn shrink_never_follows_a_link_planted_in_the_temporary_folder() {
    let fx = fixtures();
    let work = common::tempdir();
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).expect("temporary folder");
    let victim = work.path().join("victim.txt");
    std::fs::write(&victim, VICTIM_TEXT).expect("victim written");
    let plant = r#"for n in "$TMPDIR/tch-prune-shrink-$$-0.pt" "$TMPDIR/tch-prune-shrink-$$-0"; do ln -s "$VICTIM" "$n" || exit 99; done; exec "$0" "$@""#;
    let out = Command::new("sh")
        .arg("-c")
        .arg(plant)
        .arg(binary())
        .args([
            "shrink",
            "--amount",
            "0.5",
            "--input-shape",
            "1,3,16,16",
            "-o",
        ])
        .arg(work.path().join("out.pt"))
        .arg(fx.gen.join("shrink_cnn.pt"))
        .env("TMPDIR", &tmp)
        .env("VICTIM", &victim)
        .stdout(Stdio::null())
        .output()
        .expect("the CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&victim).expect("victim read"),
        VICTIM_TEXT,
        "the planted link was followed"
    );
    // The two links stay, and nothing else: the CLI's own folder is gone.
    let left = names_in(&tmp);
    assert_eq!(left.len(), 2, "in the temporary folder: {left:?}");
    for name in &left {
        let meta = std::fs::symlink_metadata(tmp.join(name)).expect("entry");
        assert!(
            meta.file_type().is_symlink(),
            "{name} is not a planted link"
        );
    }
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

/// A safetensors file of zero-filled f32 tensors of these names and shapes.
fn zeros_safetensors(tensors: &[(&str, &[usize])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let bytes = 4 * shape.iter().product::<usize>();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header).expect("JSON");
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.resize(out.len() + offset, 0);
    out
}

/// `shrink DIR` on configs that lie about the widths: absurd head counts (2^62, or 2^40 with
/// an explicit head_dim, once looped over one by one: a run that never ended), heads wider
/// than hidden_size (head_dim 0: once a division by zero, a panic, over empty projections),
/// and a product of widths past i64 (once an overflow, a panic). Each is one line and exit 1
/// at once, with no output folder.
#[test]
fn shrink_refuses_config_widths_the_tensors_do_not_have() {
    let layer = |h: usize, q: usize, kv: usize| -> Vec<u8> {
        let p = "model.layers.0";
        let (gate, up, down) = (
            format!("{p}.mlp.gate_proj.weight"),
            format!("{p}.mlp.up_proj.weight"),
            format!("{p}.mlp.down_proj.weight"),
        );
        let (qn, kn, vn, on, qb) = (
            format!("{p}.self_attn.q_proj.weight"),
            format!("{p}.self_attn.k_proj.weight"),
            format!("{p}.self_attn.v_proj.weight"),
            format!("{p}.self_attn.o_proj.weight"),
            format!("{p}.self_attn.q_proj.bias"),
        );
        zeros_safetensors(&[
            (&gate, &[8, h]),
            (&up, &[8, h]),
            (&down, &[h, 8]),
            (&qn, &[q, h]),
            (&kn, &[kv, h]),
            (&vn, &[kv, h]),
            (&on, &[h, q]),
            (&qb, &[q]),
        ])
    };
    let cases: [(&str, serde_json::Value, Vec<u8>, &[&str]); 4] = [
        (
            "2^62 heads",
            serde_json::json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1u64 << 62}),
            layer(64, 64, 64),
            &[
                "config.json",
                "num_attention_heads 4611686018427387904",
                "head_dim",
            ],
        ),
        (
            "2^40 heads of head_dim 1",
            serde_json::json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1u64 << 40, "head_dim": 1}),
            layer(64, 64, 64),
            &[
                "q_proj.weight",
                "has shape [64, 64]",
                "config.json says [1099511627776, 64]",
            ],
        ),
        (
            "heads wider than hidden_size, empty projections",
            serde_json::json!({"model_type": "qwen2", "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 8}),
            layer(4, 0, 0),
            &[
                "config.json",
                "smaller than num_attention_heads 8",
                "head_dim",
            ],
        ),
        (
            "heads times head_dim past i64",
            serde_json::json!({"model_type": "mistral", "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1u64 << 40, "head_dim": 1u64 << 40}),
            layer(64, 64, 64),
            &["config.json", "past any tensor's size"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, config, weights, words) in cases {
        let work = common::tempdir();
        let model = work.path().join("model");
        std::fs::create_dir(&model).expect("folder");
        std::fs::write(model.join("config.json"), config.to_string()).expect("config");
        std::fs::write(model.join("model.safetensors"), weights).expect("weights");
        let args: Vec<String> = ["shrink", "model", "-o", "out", "--amount", "0.5"]
            .map(String::from)
            .into();
        let out = run(&args, work.path());
        let lines: Vec<&str> = out.stderr.lines().collect();
        let ok = out.status == 1
            && lines.len() == 1
            && words.iter().all(|w| lines[0].contains(w))
            && !work.path().join("out").exists()
            && out.cpu_secs < 10.0;
        if !ok {
            failures.push(format!(
                "{what}: status {}, {:.1} s of CPU, stderr: {}",
                out.status,
                out.cpu_secs,
                out.stderr.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A model folder made at `dir`: `model.safetensors` (`fc.weight`, 8 entries) and an empty
/// `config.json`.
fn plain_folder(dir: &Path) {
    std::fs::create_dir(dir).expect("folder");
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes("fc.weight", 8),
    )
    .expect("weights");
    std::fs::write(dir.join("config.json"), b"{}").expect("config");
}

/// `tch-prune prune INPUT -o OUTPUT --method l1-unstructured --amount 0.5`, run in `work`.
fn prune_half(input: &Path, output: &str, work: &Path) -> Run {
    let args: Vec<String> = [
        "prune".to_string(),
        input.display().to_string(),
        "-o".into(),
        output.into(),
        "--method".into(),
        "l1-unstructured".into(),
        "--amount".into(),
        "0.5".into(),
    ]
    .into();
    run(&args, work)
}

/// A model folder from a stranger (a git clone, an unpacked archive) holding links to files
/// outside it (`/proc/self/environ`, a secret beside the folder) carries none of them into the
/// output, which would publish their bytes with the pruned model, and weights linked from
/// outside are refused; a link to a file inside the folder and the links of a Hugging Face
/// cache snapshot to its blobs are followed. Names with a newline or a terminal escape are
/// shown escaped on the summary's one line.
#[test]
fn a_model_folder_carries_no_link_out_of_it() {
    let work = common::tempdir();
    let w = work.path();
    std::fs::write(w.join("secret.txt"), b"SECRET").expect("secret");
    let weights = safetensors_bytes("fc.weight", 8);
    // A stranger's folder, and a cache snapshot of the same files.
    let model = w.join("model");
    let repo = w.join("models--org--tiny");
    let snapshot = repo.join("snapshots").join("0123abc");
    plain_folder(&model);
    std::fs::create_dir_all(&snapshot).expect("folder");
    std::fs::create_dir(repo.join("blobs")).expect("folder");
    std::fs::write(model.join("odd\n\u{1b}[31mname.txt"), b"x").expect("odd name");
    use std::os::unix::fs::symlink;
    symlink("/proc/self/environ", model.join("environ.txt")).expect("link");
    symlink("../secret.txt", model.join("relative.txt")).expect("link");
    symlink(w.join("secret.txt"), model.join("absolute.txt")).expect("link");
    symlink("config.json", model.join("inside.json")).expect("link");
    std::fs::write(repo.join("blobs/aaa"), &weights).expect("blob");
    std::fs::write(repo.join("blobs/bbb"), b"{}").expect("blob");
    symlink("../../blobs/aaa", snapshot.join("model.safetensors")).expect("link");
    symlink("../../blobs/bbb", snapshot.join("config.json")).expect("link");
    symlink("../../../secret.txt", snapshot.join("tokenizer.json")).expect("link");

    let prune = |input: &Path, output: &str| prune_half(input, output, w);
    let out = prune(&model, "out");
    assert_eq!(out.status, 0, "{}", out.stderr);
    let carried = names_in(&w.join("out"));
    let expected: BTreeSet<String> = [
        "config.json",
        "inside.json",
        "model.safetensors",
        "odd\n\u{1b}[31mname.txt",
    ]
    .map(String::from)
    .into();
    assert_eq!(carried, expected, "{}", out.stdout);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    for words in [
        "left out environ.txt: a link to a file outside the folder",
        "left out relative.txt",
        "left out absolute.txt",
        "odd\\n\\u{1b}[31mname.txt",
    ] {
        assert!(out.stdout.contains(words), "{words}: {}", out.stdout);
    }

    // Weights linked from outside the folder: another model of this machine, which the
    // output would publish pruned.
    let linked = w.join("linked");
    std::fs::create_dir(&linked).expect("folder");
    std::fs::write(w.join("private.safetensors"), &weights).expect("weights");
    symlink("../private.safetensors", linked.join("model.safetensors")).expect("link");
    let out = prune(&linked, "out3");
    assert_eq!(out.status, 1, "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("weights file 'model.safetensors' is a link to a file outside the folder"),
        "{}",
        out.stderr
    );
    assert!(!w.join("out3").exists());

    // shrink reads config.json and writes it back rewritten: one linked from outside is refused.
    let config_out = w.join("config_out");
    std::fs::create_dir(&config_out).expect("folder");
    std::fs::write(config_out.join("model.safetensors"), &weights).expect("weights");
    symlink("../secret.txt", config_out.join("config.json")).expect("link");
    let args: Vec<String> = ["shrink", "config_out", "-o", "out4", "--amount", "0.5"]
        .map(String::from)
        .into();
    let out = run(&args, w);
    assert_eq!(out.status, 1, "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("config.json is a link to a file outside the folder"),
        "{}",
        out.stderr
    );
    assert!(!w.join("out4").exists());

    let out = prune(&snapshot, "out2");
    assert_eq!(out.status, 0, "{}", out.stderr);
    let carried = names_in(&w.join("out2"));
    assert_eq!(
        carried,
        ["config.json", "model.safetensors"]
            .map(String::from)
            .into(),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("left out tokenizer.json: a link to a file outside the folder"),
        "{}",
        out.stdout
    );
}

/// A calibration file of 200,000 one-element tensors (17 MB), one misnamed: refused on one line
/// in linear time. Each name was once searched for through all the others, 41 s of CPU for
/// this file and hours for a million tensors, before the model was even loaded.
#[test]
fn a_calibration_file_of_many_tensors_is_read_in_linear_time() {
    let work = common::tempdir();
    let w = work.path();
    let n = 200_000;
    let mut header = serde_json::Map::new();
    for i in 0..n {
        let name = if i + 1 < n {
            format!("input.{i}")
        } else {
            "x".into()
        };
        header.insert(
            name,
            serde_json::json!({"dtype": "F32", "shape": [1, 1], "data_offsets": [4 * i, 4 * i + 4]}),
        );
    }
    let mut header = serde_json::to_vec(&header).expect("JSON");
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.resize(bytes.len() + 4 * n, 0);
    std::fs::write(w.join("calibration.safetensors"), bytes).expect("calibration");
    // Never loaded: the calibration file is checked first.
    std::fs::write(w.join("model.pt"), b"not read").expect("model");
    let args: Vec<String> = "prune model.pt -o out.pt --method wanda --amount 0.5 --calibration calibration.safetensors"
        .split(' ')
        .map(String::from)
        .collect();
    let out = run(&args, w);
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("named 'input'"), "{}", out.stderr);
    assert!(out.cpu_secs < 10.0, "{:.1} s of CPU", out.cpu_secs);
    assert!(!w.join("out.pt").exists());
}

/// `shrink DIR` on a layer of a million MLP neurons, all zero (a 12 MB folder): the neurons
/// removed are counted in n log n. Each was once looked for among the kept ones (80 s of CPU
/// for this folder, hours for a few million).
#[test]
fn shrink_of_a_wide_layer_takes_no_quadratic_time() {
    let work = common::tempdir();
    let w = work.path();
    let model = w.join("model");
    std::fs::create_dir(&model).expect("folder");
    let n = 1 << 20;
    let p = "model.layers.0";
    let names = [
        format!("{p}.mlp.gate_proj.weight"),
        format!("{p}.mlp.up_proj.weight"),
        format!("{p}.mlp.down_proj.weight"),
        format!("{p}.self_attn.q_proj.weight"),
        format!("{p}.self_attn.k_proj.weight"),
        format!("{p}.self_attn.v_proj.weight"),
        format!("{p}.self_attn.o_proj.weight"),
    ];
    let shapes: [&[usize]; 7] = [
        &[n, 1],
        &[n, 1],
        &[1, n],
        &[1, 1],
        &[1, 1],
        &[1, 1],
        &[1, 1],
    ];
    let tensors: Vec<(&str, &[usize])> = names.iter().map(String::as_str).zip(shapes).collect();
    std::fs::write(model.join("model.safetensors"), zeros_safetensors(&tensors)).expect("weights");
    let config = serde_json::json!({"model_type": "mistral", "hidden_size": 1, "intermediate_size": n, "num_hidden_layers": 1, "num_attention_heads": 1});
    std::fs::write(model.join("config.json"), config.to_string()).expect("config");
    let args: Vec<String> = "shrink model -o out --mlp-amount 0.5 --head-amount 0"
        .split(' ')
        .map(String::from)
        .collect();
    let out = run(&args, w);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("removed 524288 neurons"),
        "{}",
        out.stdout
    );
    assert!(out.cpu_secs < 10.0, "{:.1} s of CPU", out.cpu_secs);
}

/// A tensor name with a newline and a terminal escape (any reader's: safetensors here, a
/// `.pt2`'s weights config alike) is shown escaped in `report`'s table: one row, and nothing
/// the file chose reaches the terminal.
#[test]
fn report_shows_names_with_control_characters_escaped() {
    let work = common::tempdir();
    let name = "fc.we\nig\u{1b}[2Jht";
    let file = work.path().join("names.safetensors");
    std::fs::write(&file, zeros_safetensors(&[(name, &[2, 2])])).expect("write");
    let args: Vec<String> = ["report".to_string(), file.display().to_string()].into();
    let out = run(&args, work.path());
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(!out.stdout.contains('\u{1b}'), "{:?}", out.stdout);
    let row: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("fc.we"))
        .collect();
    assert_eq!(row.len(), 1, "{:?}", out.stdout);
    assert!(
        row[0].starts_with("fc.we\\nig\\u{1b}[2Jht  [2, 2]"),
        "{:?}",
        row[0]
    );
}

/// `shrink DIR` on a layer whose weights hold NaN (eight gate rows): the neurons are ranked in
/// a total order, NaN last as torch.topk ranks it, where a comparison that called NaN equal to
/// every score made the sort panic (exit 101) on this layout.
#[test]
fn shrink_ranks_neurons_with_nan_weights_without_a_panic() {
    let work = common::tempdir();
    let w = work.path();
    let model = w.join("model");
    std::fs::create_dir(&model).expect("folder");
    let (n, h) = (30usize, 2usize);
    let p = "model.layers.0";
    let names = [
        format!("{p}.mlp.gate_proj.weight"),
        format!("{p}.mlp.up_proj.weight"),
        format!("{p}.mlp.down_proj.weight"),
        format!("{p}.self_attn.q_proj.weight"),
        format!("{p}.self_attn.k_proj.weight"),
        format!("{p}.self_attn.v_proj.weight"),
        format!("{p}.self_attn.o_proj.weight"),
    ];
    let shapes: [&[usize]; 7] = [
        &[n, h],
        &[n, h],
        &[h, n],
        &[h, h],
        &[h, h],
        &[h, h],
        &[h, h],
    ];
    let tensors: Vec<(&str, &[usize])> = names.iter().map(String::as_str).zip(shapes).collect();
    let mut bytes = zeros_safetensors(&tensors);
    // Values 1 to 101, none zero, and these gate rows NaN.
    let nan_rows = [1, 8, 12, 13, 15, 16, 24, 27];
    let data = bytes.len() - 4 * (3 * n * h + 4 * h * h);
    for (i, v) in bytes[data..].chunks_mut(4).enumerate() {
        let nan = i < n * h && nan_rows.contains(&(i / h));
        let x = if nan {
            f32::NAN
        } else {
            1.0 + ((i * 37) % 101) as f32
        };
        v.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(model.join("model.safetensors"), bytes).expect("weights");
    let config = serde_json::json!({"model_type": "mistral", "hidden_size": h, "intermediate_size": n, "num_hidden_layers": 1, "num_attention_heads": 2});
    std::fs::write(model.join("config.json"), config.to_string()).expect("config");
    let args: Vec<String> = "shrink model -o out --mlp-amount 0.5 --head-amount 0"
        .split(' ')
        .map(String::from)
        .collect();
    let out = run(&args, w);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("intermediate_size 30 -> 15"),
        "{}",
        out.stdout
    );
}

/// The files a model folder carries keep their permission bits (a tokenizer only its owner may
/// read is not made readable by all), and a carried file's size is checked against the room
/// the output has before anything is copied: a sparse file from an archive (8 TiB that take no
/// block) would fill the disk once copied.
#[test]
fn carried_files_keep_their_mode_and_never_fill_the_disk() {
    use std::os::unix::fs::PermissionsExt;
    let work = common::tempdir();
    let w = work.path();
    let model = w.join("model");
    plain_folder(&model);
    let private = model.join("private.json");
    std::fs::write(&private, b"{}").expect("file");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("mode");
    let prune = |output: &str| prune_half(&model, output, w);
    let out = prune("out");
    assert_eq!(out.status, 0, "{}", out.stderr);
    let mode = |p: &Path| std::fs::metadata(p).expect("carried").permissions().mode() & 0o777;
    assert_eq!(mode(&w.join("out/private.json")), 0o600);

    let sparse = std::fs::File::create(model.join("vocab.txt")).expect("file");
    if sparse.set_len(1 << 43).is_err() {
        eprintln!("skipped the sparse file: this filesystem holds no 8 TiB file");
        return;
    }
    let out = prune("out2");
    assert_eq!(out.status, 1, "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("make room, or write it elsewhere"),
        "{}",
        out.stderr
    );
    assert_eq!(names_in(w), ["model", "out"].map(String::from).into());
}

/// A sharded model folder at `dir`: two shards (`a.weight`, `b.weight`), their index and a
/// `config.json`.
fn sharded_folder(dir: &Path) {
    std::fs::create_dir(dir).expect("folder");
    let shards = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    for (shard, name) in shards.iter().zip(["a.weight", "b.weight"]) {
        std::fs::write(dir.join(shard), safetensors_bytes(name, 8)).expect("shard");
    }
    let index = format!(
        r#"{{"metadata": {{}}, "weight_map": {{"a.weight": "{}", "b.weight": "{}"}}}}"#,
        shards[0], shards[1]
    );
    std::fs::write(dir.join("model.safetensors.index.json"), index).expect("index");
    std::fs::write(dir.join("config.json"), b"{}").expect("config");
}

/// No destination names a file the run reads: `--state-out` a shard of the input (which it
/// replaced before), its index, a file the folder carries, a hard link to a shard; `--svg` a
/// shard; `-o` the plan file. Each is refused in one line before anything is read, and every
/// input file is left as it was.
#[test]
fn no_destination_replaces_a_file_the_run_reads() {
    let work = common::tempdir();
    let w = work.path();
    let model = w.join("hfs");
    sharded_folder(&model);
    std::fs::hard_link(
        model.join("model-00002-of-00002.safetensors"),
        w.join("linked.safetensors"),
    )
    .expect("hard link");
    std::fs::write(
        w.join("plain.safetensors"),
        safetensors_bytes("fc.weight", 8),
    )
    .expect("file");
    std::fs::write(
        w.join("plan.json"),
        br#"[{"params": "*", "method": "l1-unstructured", "amount": 0.5}]"#,
    )
    .expect("plan");
    let files = [
        "hfs/model-00001-of-00002.safetensors",
        "hfs/model-00002-of-00002.safetensors",
        "hfs/model.safetensors.index.json",
        "hfs/config.json",
        "plain.safetensors",
        "plan.json",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(w.join(f)).expect("read"))
        .collect();
    let prune = "prune hfs -o hfso --method l1-unstructured --amount 0.5 --state-out";
    let cases = [
        format!("{prune} hfs/model-00001-of-00002.safetensors"),
        format!("{prune} hfs/model.safetensors.index.json"),
        format!("{prune} hfs/config.json"),
        format!("{prune} linked.safetensors"),
        "report hfs --svg hfs/model-00002-of-00002.safetensors".to_string(),
        "report hfs/model.safetensors.index.json --svg linked.safetensors".to_string(),
        "prune plain.safetensors -o plan.json --plan plan.json".to_string(),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let args: Vec<String> = case.split(' ').map(String::from).collect();
        let out = run(&args, w);
        let refused = out.status == 1
            && out.stderr.lines().count() == 1
            && (out.stderr.contains("a file this run reads")
                || out.stderr.contains("names the input file"));
        if !refused {
            failures.push(format!(
                "{case}: status {} [{}]",
                out.status,
                out.stderr.trim()
            ));
        }
        for (file, bytes) in files.iter().zip(&before) {
            if std::fs::read(w.join(file)).ok().as_ref() != Some(bytes) {
                failures.push(format!("{case}: {file} changed"));
            }
        }
        if w.join("hfso").exists() {
            failures.push(format!("{case}: wrote hfso"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Permissions (SECURITY.md §11): a private (0600) file pruned in place stays 0600; a new
/// output takes its input's permission bits (under the umask, as `cp` does), by every write
/// path (in memory with `--state-out`, streamed, a folder, a sharded folder); an existing
/// destination that is replaced keeps its own.
#[test]
fn outputs_are_no_more_readable_than_their_input() {
    use std::os::unix::fs::PermissionsExt;
    let work = common::tempdir();
    let w = work.path();
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("mode")
    };
    let mode = |p: &Path| std::fs::metadata(p).expect("output").permissions().mode() & 0o777;
    let input = w.join("priv.safetensors");
    std::fs::write(&input, safetensors_bytes("fc.weight", 8)).expect("input");
    set(&input, 0o600);
    let model = w.join("model");
    plain_folder(&model);
    set(&model.join("model.safetensors"), 0o600);
    let shards = w.join("shards");
    sharded_folder(&shards);
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        set(&shards.join(shard), 0o600);
    }
    std::fs::write(w.join("shared.safetensors"), b"old").expect("destination");
    set(&w.join("shared.safetensors"), 0o640);

    let cases: [(&Path, &str, &[&str], &str, u32); 7] = [
        (&input, "priv.safetensors", &[], "priv.safetensors", 0o600),
        (&input, "new.safetensors", &[], "new.safetensors", 0o600),
        (
            &input,
            "mem.safetensors",
            &["--state-out", "state.safetensors"],
            "state.safetensors",
            0o600,
        ),
        (
            &input,
            "mem2.safetensors",
            &["--in-memory"],
            "mem2.safetensors",
            0o600,
        ),
        (
            &input,
            "shared.safetensors",
            &[],
            "shared.safetensors",
            0o640,
        ),
        (&model, "out", &[], "out/model.safetensors", 0o600),
        (
            &shards,
            "sout",
            &[],
            "sout/model-00002-of-00002.safetensors",
            0o600,
        ),
    ];
    let mut failures = Vec::new();
    for (from, to, extra, check, want) in cases {
        let mut args: Vec<String> = [
            "prune",
            &from.display().to_string(),
            "-o",
            to,
            "--method",
            "l1-unstructured",
            "--amount",
            "0.5",
        ]
        .map(String::from)
        .into();
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = run(&args, w);
        if out.status != 0 {
            failures.push(format!(
                "{to}: status {} [{}]",
                out.status,
                out.stderr.trim()
            ));
            continue;
        }
        let got = mode(&w.join(check));
        if got != want {
            failures.push(format!("{check}: mode {got:o}, expected {want:o}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
