//! Embeds the libtorch library folder as the run path of every binary, test and example,
//! so nothing needs `LD_LIBRARY_PATH`. torch-sys (`links = "tch"`) exports the folder to
//! crates that depend on it directly as `DEP_TCH_LIBTORCH_LIB`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
