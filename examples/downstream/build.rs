// The three lines the README gives: libtorch's folder as the binary's run path, and libtorch's
// CUDA part kept linked (a dependency's link arguments never reach this crate's binaries).
fn main() {
    if let Ok(arg) = std::env::var("DEP_TCH_PRUNE_LINK_ARG") {
        println!("cargo:rustc-link-arg={arg}");
    }
}
