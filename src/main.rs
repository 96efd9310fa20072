//! The `iiifd` binary: everything is in the library; see [`iiifd::cli`].
fn main() -> std::process::ExitCode {
    iiifd::cli::main()
}
