//! Linking: libtorch's CUDA part is among the libraries our tests and examples need and is
//! loaded, when the libtorch built against has one, and the CLI loads it when asked for a CUDA
//! device; `Backend::detect` and `tch-prune doctor` say so. What
//! needs a GPU (devices, cuDNN in use) is asserted only to be consistent with tch's own answers.

use crate::common::Cli;
use std::path::Path;
use tch_prune::backend::{Backend, LIBTORCH_LIB};

/// The libtorch built against ships a CUDA backend.
fn libtorch_has_cuda() -> bool {
    Path::new(LIBTORCH_LIB).join("libtorch_cuda.so").exists()
}

/// The `DT_NEEDED` entries of a 64-bit little-endian ELF file (what `readelf -d` lists as
/// NEEDED), read from its section headers: the dynamic section and the string table it links.
fn needed_libraries(path: &Path) -> Vec<String> {
    let elf = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &elf[..4],
        b"\x7fELF",
        "{} is not an ELF file",
        path.display()
    );
    assert_eq!(
        (elf[4], elf[5]),
        (2, 1),
        "{}: not 64-bit little-endian",
        path.display()
    );
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    let (sh_off, sh_size, sh_count) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    let section = |i: usize| sh_off + i * sh_size;
    const SHT_DYNAMIC: usize = 6;
    const DT_NEEDED: usize = 1;
    let dynamic = (0..sh_count)
        .map(section)
        .find(|&s| u32_at(s + 4) == SHT_DYNAMIC)
        .unwrap_or_else(|| panic!("{} has no dynamic section", path.display()));
    let strings = u64_at(section(u32_at(dynamic + 0x28)) + 0x18);
    let (start, size) = (u64_at(dynamic + 0x18), u64_at(dynamic + 0x20));
    (start..start + size)
        .step_by(16)
        .filter(|&entry| u64_at(entry) == DT_NEEDED)
        .map(|entry| {
            let name = &elf[strings + u64_at(entry + 8)..];
            let end = name.iter().position(|&b| b == 0).unwrap();
            String::from_utf8_lossy(&name[..end]).into_owned()
        })
        .collect()
}

fn assert_links_libtorch(binary: &Path) {
    let needed = needed_libraries(binary);
    // The reader itself: every binary here needs the C library. (libtorch_cpu.so is not always
    // listed: an example built as a test references none of its symbols, and libtorch.so loads it.)
    assert!(
        needed.iter().any(|n| n == "libc.so.6"),
        "{}: the ELF reader found no libc.so.6 in {needed:?}",
        binary.display()
    );
    assert!(
        needed.iter().any(|n| n == "libtorch.so"),
        "{} does not need libtorch.so: {needed:?}",
        binary.display()
    );
    if libtorch_has_cuda() {
        assert!(
            needed.iter().any(|n| n == "libtorch_cuda.so"),
            "{} does not need libtorch_cuda.so although {LIBTORCH_LIB} has it: {needed:?}",
            binary.display()
        );
    }
}

#[test]
fn the_tests_need_libtorch_cuda() {
    assert_links_libtorch(&std::env::current_exe().unwrap());
}

/// The CLI loads the CUDA backend when a command asks for a CUDA device (`doctor`, below, loads
/// it and reports it loaded): a CPU run does not pay its start-up memory.
#[test]
fn the_cli_loads_libtorch_cuda_only_when_asked() {
    let cli = Path::new(env!("CARGO_BIN_EXE_tch-prune"));
    let needed = needed_libraries(cli);
    assert!(needed.iter().any(|n| n == "libc.so.6"), "{needed:?}");
    for backend in ["libtorch_cuda.so", "libtorch.so"] {
        assert!(
            !needed.iter().any(|n| n == backend),
            "{} needs {backend}: {needed:?}",
            cli.display()
        );
    }
}

#[test]
fn the_examples_need_libtorch_cuda() {
    // The examples cargo built with this test (target/<profile>/examples/).
    let examples = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples");
    // `cargo build` names it `demo`; `cargo test --all-targets` leaves only `demo-<hash>`. The
    // newest is the one built with this test (older builds may linger in the folder).
    let demo = std::fs::read_dir(&examples)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "demo" || (n.starts_with("demo-") && !n.contains('.')))
        })
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no demo binary in {}: run this test with `cargo test --all-targets` (as `make \
                 test` does), which builds the examples",
                examples.display()
            )
        });
    assert_links_libtorch(&demo);
}

#[test]
fn this_process_has_the_cuda_backend_loaded() {
    let backend = Backend::detect();
    assert_eq!(backend.crate_version, env!("CARGO_PKG_VERSION"));
    assert!(backend.libtorch_version.starts_with("2.13"), "{backend}");
    assert_eq!(backend.libtorch_lib, LIBTORCH_LIB);
    assert_eq!(backend.cuda_compiled, libtorch_has_cuda(), "{backend}");
    // Loaded exactly when compiled in: linking keeps it.
    assert_eq!(backend.cuda_loaded, backend.cuda_compiled, "{backend}");
    assert_eq!(backend.cuda_runtime_version.is_some(), backend.cuda_loaded);
    // Consistent with tch's own answers.
    assert_eq!(backend.cuda_devices, tch::Cuda::device_count(), "{backend}");
    assert_eq!(backend.cuda_devices > 0, tch::Cuda::is_available());
    assert_eq!(
        backend.cudnn_available,
        tch::Cuda::cudnn_is_available(),
        "{backend}"
    );
    assert_eq!(
        backend.cuda_unavailable_reason.is_some(),
        backend.cuda_devices == 0,
        "{backend}"
    );
    if let Some(why) = &backend.cuda_unavailable_reason {
        assert!(!why.is_empty() && !why.contains('\n'), "{why:?}");
    }
}

#[test]
fn doctor_reports_the_backend() {
    let out = Cli::new("doctor")
        .arg("--json")
        .command()
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["crate_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["libtorch_lib"], LIBTORCH_LIB);
    assert_eq!(report["cuda_compiled"], libtorch_has_cuda());
    assert_eq!(report["cuda_loaded"], libtorch_has_cuda(), "{report}");
    let devices = report["cuda_devices"].as_i64().unwrap();
    assert_eq!(devices, tch::Cuda::device_count());
    if devices == 0 {
        let why = report["cuda_unavailable_reason"].as_str().unwrap();
        assert!(!why.is_empty());
    }
    for field in [
        "libtorch_version",
        "cudnn_version",
        "cudnn_available",
        "cuda_runtime_version",
        "nccl_missing",
    ] {
        assert!(report.get(field).is_some(), "no {field} in {report}");
    }

    // The text form: one line per field, the version line first.
    let out = Cli::new("doctor").run();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines[0].ends_with(env!("CARGO_PKG_VERSION")), "{text}");
    let loaded = if libtorch_has_cuda() {
        "CUDA loaded    yes"
    } else {
        "CUDA loaded    no"
    };
    assert!(lines[3].starts_with(loaded), "{text}");
    // Built wherever libtorch has CUDA and the provisioned wheels bring NCCL's headers.
    let nccl = if libtorch_has_cuda() {
        "NCCL           built"
    } else {
        "NCCL           no"
    };
    assert!(lines[6].starts_with(nccl), "{text}");

    let out = Cli::new("--version").run();
    let version = String::from_utf8(out.stdout).unwrap();
    assert!(
        version.starts_with(&format!(
            "tch-prune {} (libtorch 2.13",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
}
