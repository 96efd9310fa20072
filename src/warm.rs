//! `iiifd warm`: submit a crawl job to a running server's admin listener and follow it with a progress
//! bar until it ends. A plain blocking HTTP/1.1 client is enough for one loopback connection at a time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

/// What to warm.
#[derive(clap::Args, Debug, Clone)]
pub struct WarmArgs {
    /// Identifiers to warm.
    pub ids: Vec<String>,
    /// Warm every image under the server's root.
    #[arg(long)]
    pub all: bool,
    /// Warm the image services of this server referenced by a IIIF manifest or collection (JSON file).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<std::path::PathBuf>,
    /// API versions whose URL shapes to warm (repeatable; default 3).
    #[arg(long = "version")]
    pub versions: Vec<u8>,
    /// Admin listener URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub admin: String,
    /// Admin token, if the server requires one.
    #[arg(long)]
    pub token: Option<String>,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

fn request(
    admin: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Reply, String> {
    let host = admin
        .strip_prefix("http://")
        .ok_or("--admin must be an http:// URL")?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(host)
        .map_err(|e| format!("cannot reach the admin listener at {host}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed reply from the server")?;
    let status = String::from_utf8_lossy(&buf[..end])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("malformed status line")?;
    Ok(Reply {
        status,
        body: buf[end + 4..].to_vec(),
    })
}

/// Run `iiifd warm`.
pub(crate) fn run(args: &WarmArgs) -> ExitCode {
    match warm(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("iiifd warm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn warm(args: &WarmArgs) -> Result<bool, String> {
    let mut spec = serde_json::json!({ "identifiers": args.ids, "all": args.all });
    if !args.versions.is_empty() {
        spec["versions"] = serde_json::json!(args.versions);
    }
    if let Some(path) = &args.manifest {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        spec["manifest"] = manifest;
    }
    let body = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    let token = args.token.as_deref();
    let reply = request(&args.admin, token, "POST", "/admin/crawl", &body)?;
    if reply.status != 202 {
        return Err(format!(
            "the server refused the job ({}): {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim()
        ));
    }
    let id = serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .ok_or("no job id in the reply")?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let state = loop {
        std::thread::sleep(Duration::from_millis(300));
        let reply = request(
            &args.admin,
            token,
            "GET",
            &format!("/admin/crawl/{id}"),
            b"",
        )?;
        let state: serde_json::Value =
            serde_json::from_slice(&reply.body).map_err(|e| format!("job {id}: {e}"))?;
        bar.set_length(state["planned"].as_u64().unwrap_or(0));
        bar.set_position(state["next"].as_u64().unwrap_or(0));
        bar.set_message(format!(
            "rendered {} stored {} failed {}",
            state["rendered"], state["already_stored"], state["failed"]
        ));
        if matches!(
            state["state"].as_str(),
            Some("done" | "cancelled" | "failed")
        ) {
            break state;
        }
    };
    bar.finish();
    println!(
        "job {id} {}: {} planned, {} rendered, {} already stored, {} failed, {} bytes written, {:.1} s",
        state["state"].as_str().unwrap_or("?"),
        state["planned"],
        state["rendered"],
        state["already_stored"],
        state["failed"],
        state["bytes_written"],
        state["elapsed_secs"].as_f64().unwrap_or(0.0)
    );
    for e in state["errors"].as_array().into_iter().flatten() {
        println!("  error: {}", e.as_str().unwrap_or(""));
    }
    Ok(state["state"] == "done" && state["failed"].as_u64() == Some(0))
}
