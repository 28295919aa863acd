//! 1. Embeds the libtorch library folder as the run path of every binary, test and example, so
//!    nothing needs `LD_LIBRARY_PATH`. torch-sys (`links = "tch"`) exports the folder to crates
//!    that depend on it directly as `DEP_TCH_LIBTORCH_LIB`.
//! 2. Compiles the small C++ part of the crate (src/ffi/), against the same libtorch.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=src/ffi/grad_redirect.cpp");
    println!("cargo:rerun-if-changed=src/ffi/shrink_graph.cpp");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report libtorch's lib folder"),
    );
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let include = lib.parent().expect("libtorch root").join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!(
            "-D_GLIBCXX_USE_CXX11_ABI={}",
            std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into())
        ))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/ffi/grad_redirect.cpp")
        .file("src/ffi/shrink_graph.cpp")
        .compile("tch_prune_ffi");
}
