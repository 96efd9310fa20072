//! Compiles `src/render/decode/jpeg_hooks.c` (see its comment) against the libjpeg headers that
//! mozjpeg-sys built the library with: it exports them as `DEP_JPEG_INCLUDE`.
fn main() {
    println!("cargo:rerun-if-changed=src/render/decode/jpeg_hooks.c");
    let Some(include) = std::env::var_os("DEP_JPEG_INCLUDE") else {
        panic!("mozjpeg-sys did not export its include directories (DEP_JPEG_INCLUDE)");
    };
    let mut build = cc::Build::new();
    for dir in std::env::split_paths(&include) {
        build.include(dir);
    }
    build
        .file("src/render/decode/jpeg_hooks.c")
        .warnings(true)
        .compile("iiifd_jpeg_hooks");
}
