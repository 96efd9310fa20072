//! The `iiifd` binary: everything is in the library; see [`iiifd::cli`].

// mimalloc (built from C by the cc crate) instead of glibc's malloc: renders allocate and free
// multi-megabyte pixel buffers all the time, and glibc returns them to the kernel and faults them
// back in page by page. Measured on a cold 256 px thumbnail from a pyramidal TIFF: 3.1 ms with
// glibc, 2.5 ms with mimalloc (the same render, in-process, 400 times).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    iiifd::cli::main()
}
