//! Fills a store with synthetic objects for `benches/store_scale.sh` (not a timed benchmark):
//!
//!     cargo bench --bench store_fill -- CONFIG IDENTIFIER N BYTES URLS_OUT
//!
//! Writes N objects of BYTES each straight into the store that CONFIG names, under the keys the
//! server gives N distinct region requests of IDENTIFIER, and lists those request paths in URLS_OUT.
//! Without arguments (as `cargo test --all-targets` runs it) it prints this usage and exits.

use std::io::Write;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [config, identifier, n, bytes, urls] = args.as_slice() else {
        eprintln!("usage: store_fill CONFIG IDENTIFIER N BYTES URLS_OUT");
        return Ok(());
    };
    let config = iiifd::config::Config::load_from_process(
        Some(std::path::Path::new(config)),
        &iiifd::config::Overrides::default(),
    )?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(urls)?);
    let started = Instant::now();
    let filled =
        iiifd::internals::fill_store(config, identifier, n.parse()?, bytes.parse()?, &mut out)?;
    out.flush()?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "filled {} objects, {} bytes, in {secs:.1} s ({:.0} objects/s)",
        filled.objects,
        filled.bytes,
        filled.objects as f64 / secs
    );
    Ok(())
}
