// build.rs of a binary crate that depends on tch-rpo: libtorch found at run time, CUDA kept linked.
fn main() {
    let lib = std::env::var("DEP_TCH_RPO_LIBTORCH_LIB").expect("exported by tch-rpo's build script");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}"); // find libtorch at run time, by its real path
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed"); // keep libtorch_cuda: CUDA
}
