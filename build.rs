//! 1. Links libtorch's CUDA part into every test and example of this package, when
//!    libtorch has one: torch-sys asks for `torch_cuda`, but the linker's default `--as-needed`
//!    drops it (no symbol of it is referenced), and without it libtorch has no CUDA backend.
//!    The `tch-prune` binary is not linked with it: it loads the backend when a command asks
//!    for a CUDA device (`tch_prune::backend::load_cuda`), so that CPU runs do not pay its
//!    start-up (about 130 MB of memory).
//! 2. Embeds the libtorch library folder as their run path, so nothing needs `LD_LIBRARY_PATH`.
//! 3. Hands both to the crates that depend on this one (`links = "tch_prune"`): their build
//!    script reads `DEP_TCH_PRUNE_LINK_ARG` (one linker argument doing 1 and 2 for their
//!    binaries; link arguments of a dependency never reach them) and `DEP_TCH_PRUNE_LIBTORCH_LIB`.
//! 4. Compiles the small C++ part of the crate (src/ffi/: the gradient hook, the backend report,
//!    the TorchScript save, the graph of `shrink`), against the same libtorch, with warnings on
//!    (`-Wall -Wextra` and more, libtorch's headers as system headers so that only our code is
//!    judged). From a checkout of the repository a warning fails the build: the code is ours
//!    and kept clean. From a packaged copy (crates.io, vendored: cargo writes `Cargo.toml.orig`
//!    into it) warnings are shown and do not fail it: a compiler newer than ours may warn where
//!    ours did not, and the user could not fix it.
//!
//! torch-sys (`links = "tch"`) reports libtorch's library folder to crates that depend on it
//! directly as `DEP_TCH_LIBTORCH_LIB`. With the `doc-only` feature (docs.rs) there is no
//! libtorch: nothing is linked or compiled.
use std::path::{Path, PathBuf};

/// The C++ part, one interface (tch_prune.h) and the files implementing it.
const CPP_HEADER: &str = "src/ffi/tch_prune.h";
const CPP_SOURCES: [&str; 8] = [
    "src/ffi/tch_prune.cpp",
    "src/ffi/op_call.cpp",
    "src/ffi/distributed.cpp",
    "src/ffi/backend.cpp",
    "src/ffi/grad_redirect.cpp",
    "src/ffi/script_save.cpp",
    "src/ffi/shrink_graph.cpp",
    "src/ffi/calibration_graph.cpp",
];

/// The NCCL part, built as its own shared library (`nccl_plugin`).
const NCCL_SOURCE: &str = "src/ffi/nccl.cpp";

/// The libtorch libraries that hold its GPU backends: present in CUDA (or ROCm) builds only.
const BACKEND_LIBRARIES: [&str; 4] = ["torch_cuda", "torch_cuda_cu", "torch_cuda_cpp", "torch_hip"];

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=DOCS_RS");
    for file in CPP_SOURCES.iter().chain([&CPP_HEADER]) {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed=src/ffi/vendor");

    // What src/backend.rs reports about the build.
    if std::env::var_os("CARGO_FEATURE_DOC_ONLY").is_some() || std::env::var_os("DOCS_RS").is_some()
    {
        println!("cargo:rustc-env=TCH_PRUNE_LIBTORCH_LIB=");
        println!("cargo:rustc-env=TCH_PRUNE_LIBTORCH_CUDA=0");
        println!("cargo:rustc-env=TCH_PRUNE_NCCL_PLUGIN=");
        println!("cargo:rustc-env=TCH_PRUNE_NCCL_MISSING=a documentation-only build");
        return;
    }
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        fail(
            "torch-sys did not report libtorch's library folder (DEP_TCH_LIBTORCH_LIB); it does \
             on Linux and macOS when it finds libtorch: set LIBTORCH to a libtorch 2.13 folder, \
             or LIBTORCH_USE_PYTORCH=1 with a Python that has torch 2.13 (or build the \
             documentation only, with the `doc-only` feature)",
        )
    };
    let Some(lib_str) = lib.to_str() else {
        fail(&format!(
            "libtorch's library folder {} is not UTF-8: move libtorch to a plain path",
            lib.display()
        ))
    };
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let backends: Vec<&str> = BACKEND_LIBRARIES
        .into_iter()
        .filter(|name| lib.join(format!("lib{name}.so")).exists())
        .collect();

    // `-Wl,` splits its argument at commas, so one argument carries the run path and the
    // libraries kept: a dependent's build script passes it on unchanged.
    if lib_str.contains(',') {
        fail(&format!(
            "libtorch's library folder {lib_str} contains a comma, which the linker's -Wl, \
             option cannot carry: move libtorch to a path without one"
        ));
    }
    let mut link_arg = format!("-Wl,-rpath,{lib_str}");
    if target_os == "linux" {
        // `-ltorch` too: libtorch.so is what loads the GPU backend in the official builds, and
        // naming it keeps both whatever the libtorch layout.
        link_arg.push_str(",--no-as-needed,-ltorch");
        for name in &backends {
            link_arg.push_str(&format!(",-l{name}"));
        }
        link_arg.push_str(",--as-needed");
    }
    // Cargo refuses an instruction for a kind of target the package does not have (a packaged
    // copy may lack tests/); they are all found in their folders.
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    for (target, folder) in [("tests", "tests"), ("examples", "examples")] {
        if manifest.join(folder).is_dir() {
            println!("cargo:rustc-link-arg-{target}={link_arg}");
        }
    }
    // The run path alone for everything else: the binary, and the unit tests of the library
    // and of the binary (which `-tests` does not cover).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_str}");
    println!("cargo:link_arg={link_arg}");
    println!("cargo:libtorch_lib={lib_str}");
    println!("cargo:rustc-env=TCH_PRUNE_LIBTORCH_LIB={lib_str}");
    println!(
        "cargo:rustc-env=TCH_PRUNE_LIBTORCH_CUDA={}",
        u8::from(backends.iter().any(|name| name.starts_with("torch_cuda")))
    );

    // Headers: LIBTORCH_INCLUDE for split installs (tch's convention: the folder holding
    // `include/`), else next to `lib/`, as in libtorch's archives and PyTorch's wheels.
    let root = match std::env::var_os("LIBTORCH_INCLUDE") {
        Some(root) => PathBuf::from(root),
        None => lib.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let include = root.join("include");
    if !include.join("torch/csrc/api/include").is_dir() {
        fail(&format!(
            "libtorch's C++ headers are not in {}: set LIBTORCH_INCLUDE to the folder that \
             holds libtorch's include/",
            include.display()
        ));
    }
    let packaged = manifest.join("Cargo.toml.orig").is_file();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(!packaged)
        // System headers: their warnings are libtorch's, not ours.
        .flag("-isystem")
        .flag(&include)
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include"))
        // Gloo's headers, which c10d's ProcessGroupGloo.hpp includes and PyTorch's wheels do not
        // ship (src/ffi/vendor/README.md).
        .flag("-isystem")
        .flag(manifest.join("src/ffi/vendor"))
        .flag("-std=c++17")
        .flag("-Wshadow")
        .flag("-Wnon-virtual-dtor")
        .flag(format!(
            "-D_GLIBCXX_USE_CXX11_ABI={}",
            std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into())
        ))
        .flag("-DGLOG_USE_GLOG_EXPORT");
    // An exported function not declared in tch_prune.h (the one interface) is a warning: GCC
    // calls that check -Wmissing-declarations, clang -Wmissing-prototypes.
    if build.get_compiler().is_like_clang() {
        build.flag("-Wmissing-prototypes");
    } else {
        build.flag("-Wmissing-declarations");
    }
    build.files(CPP_SOURCES).compile("tch_prune_ffi");

    let nccl = if backends.contains(&"torch_cuda") {
        nccl_plugin(&build, &lib, packaged)
    } else {
        Err("this libtorch has no CUDA backend (no libtorch_cuda.so)".to_string())
    };
    match nccl {
        Ok(plugin) => {
            println!("cargo:rustc-env=TCH_PRUNE_NCCL_PLUGIN={}", plugin.display());
            println!("cargo:rustc-env=TCH_PRUNE_NCCL_MISSING=");
            println!("cargo:nccl_plugin={}", plugin.display());
        }
        Err(why) => {
            println!("cargo:rustc-env=TCH_PRUNE_NCCL_PLUGIN=");
            println!("cargo:rustc-env=TCH_PRUNE_NCCL_MISSING={why}");
        }
    }
}

/// Builds src/ffi/nccl.cpp as its own shared library, linked with libtorch's CUDA part, for the
/// process groups to load when a program asks for NCCL (a static part of the crate would tie
/// every binary to libtorch_cuda.so). Its headers (NCCL's and the CUDA runtime's) come from
/// `TCH_PRUNE_CUDA_INCLUDE` (folders separated by `:`), else from the `nvidia/*/include` folders
/// of PyTorch's wheels beside libtorch (`nvidia-nccl`, `nvidia-cuda-runtime`, and
/// `nvidia-cuda-crt` and `nvidia-cuda-cccl`, which torch does not pull in), else from
/// `/usr/local/cuda/include`. Without them the crate is built without NCCL and says why when
/// NCCL is asked for.
fn nccl_plugin(build: &cc::Build, lib: &Path, packaged: bool) -> Result<PathBuf, String> {
    println!("cargo:rerun-if-env-changed=TCH_PRUNE_CUDA_INCLUDE");
    println!("cargo:rerun-if-changed={NCCL_SOURCE}");
    let mut folders: Vec<PathBuf> = match std::env::var_os("TCH_PRUNE_CUDA_INCLUDE") {
        Some(list) => std::env::split_paths(&list).collect(),
        None => {
            // site-packages/torch/lib -> site-packages/nvidia/*/include
            let nvidia = lib
                .parent()
                .and_then(Path::parent)
                .map(|p| p.join("nvidia"));
            let mut found: Vec<PathBuf> = nvidia
                .and_then(|n| std::fs::read_dir(n).ok())
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path().join("include")))
                .filter(|p| p.is_dir())
                .collect();
            found.sort();
            found.push(PathBuf::from("/usr/local/cuda/include"));
            found
        }
    };
    folders.retain(|f| f.is_dir());
    for header in [
        "nccl.h",
        "cuda_runtime_api.h",
        "crt/host_config.h",
        "nv/target",
    ] {
        if !folders.iter().any(|f| f.join(header).exists()) {
            return Err(format!(
                "{header} was not found when the crate was built (install PyTorch's \
                 nvidia-cuda-crt and nvidia-cuda-cccl wheels of your CUDA version beside \
                 torch, or set TCH_PRUNE_CUDA_INCLUDE to the folders of NCCL's and CUDA's \
                 headers, then rebuild it: cargo clean -p tch-prune)"
            ));
        }
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let plugin = out.join("libtch_prune_nccl.so");
    let mut command = build.get_compiler().to_command();
    for folder in &folders {
        command.arg("-isystem").arg(folder);
    }
    command
        .arg(format!(
            "-I{}",
            Path::new(CPP_HEADER).parent().unwrap().display()
        ))
        .args(["-shared", "-O2", "-o"])
        .arg(&plugin)
        .arg(NCCL_SOURCE)
        .arg(format!("-L{}", lib.display()))
        .args(["-ltorch_cuda", "-ltorch_cpu", "-lc10_cuda", "-lc10"])
        .arg(format!("-Wl,-rpath,{}", lib.display()));
    let output = command
        .output()
        .map_err(|e| format!("the C++ compiler did not start: {e}"))?;
    if output.status.success() {
        return Ok(plugin);
    }
    let why = format!(
        "compiling {NCCL_SOURCE} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if packaged {
        println!("cargo:warning=tch-prune is built without NCCL: {why}");
        Err(format!(
            "the NCCL part failed to compile when the crate was built ({NCCL_SOURCE})"
        ))
    } else {
        fail(&why)
    }
}

/// Stops the build with one line saying what to do (cargo shows a failed build script's output).
fn fail(message: &str) -> ! {
    eprintln!("error: tch-prune: {message}");
    std::process::exit(1)
}
