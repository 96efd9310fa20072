//! The layering `src/lib.rs` promises, checked from the source text (no build of a graph tool
//! needed): no import cycle between the crate's top-level modules, and each foreign engine in its
//! one room (hyper in `http/`, sled in `store/index.rs`, blake3 in `key.rs`, object_store in
//! `source/s3.rs`, reqwest in `source/http.rs` and `access/decision.rs`, rustls in
//! `source/remote.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments (doc comments name modules freely).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // Only a comment when it starts the line or follows whitespace (not `http://` in a string).
            Some(i) if i == 0 || l[..i].ends_with(char::is_whitespace) => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a file names through `crate::`, including `use crate::{a::b, c}`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let (mut depth, mut item) = (0, true);
            for (j, c) in list.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item = true,
                    c if item && (c.is_alphanumeric() || c == '_') => {
                        out.insert(ident(&list[j..]).to_owned());
                        item = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest).to_owned());
        }
    }
    out
}

#[test]
fn no_import_cycle_and_every_engine_in_its_room() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut modules = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let name = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        modules.insert(name);
    }
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        let module = rel
            .split('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_owned();
        let text = code(&std::fs::read_to_string(f).expect("read"));
        for (engine, rooms) in [
            ("hyper::", &["http/"][..]),
            ("hyper_util::", &["http/"]),
            ("sled::", &["store/index.rs"]),
            ("blake3::", &["key.rs"]),
            ("object_store::", &["source/s3.rs"]),
            // Three clients: of image sources, of the institution's access decision service, of the CDN.
            (
                "reqwest::",
                &["source/http.rs", "access/decision.rs", "cdn.rs"],
            ),
            ("rustls::", &["source/remote/client.rs"]),
        ] {
            assert!(
                !text.contains(engine) || rooms.iter().any(|room| rel.starts_with(room)),
                "{rel} uses {engine}: it belongs in src/{} only",
                rooms.join(" and src/")
            );
        }
        if module == "lib" || module == "main" {
            continue;
        }
        let deps: Vec<String> = crate_refs(&text)
            .into_iter()
            .filter(|d| *d != module && modules.contains(d))
            .collect();
        graph.entry(module).or_default().extend(deps);
    }
    assert!(graph.len() > 10, "the walk found the modules: {graph:?}");
    // Pairs that must never meet, whatever else changes: the pure syntax knows nothing of ours;
    // the engines below the pipeline know nothing of HTTP, of the pipeline, or of each other's
    // insides (the store keeps bytes, the renderer makes them; neither reads the other).
    for (module, never) in [
        (
            "iiif",
            &[
                "http", "pipeline", "render", "store", "source", "app", "config",
            ][..],
        ),
        (
            "render",
            &["http", "pipeline", "store", "app", "memo", "crawl"],
        ),
        (
            // (The store reads through `source`'s object readers and its S3 client: that way only.)
            "store",
            &["http", "pipeline", "render", "app", "memo", "crawl"],
        ),
        (
            "source",
            &[
                "http", "pipeline", "render", "store", "app", "memo", "formats",
            ],
        ),
        // Format readers read bytes, wherever they are from; what is done with them is render's.
        (
            "formats",
            &[
                "http", "pipeline", "render", "store", "app", "memo", "crawl",
            ],
        ),
        ("pipeline", &["http", "app", "memo", "crawl"]),
        ("admission", &["http", "pipeline", "render", "store", "app"]),
        ("key", &["http", "pipeline", "render", "store", "app"]),
        (
            "sys",
            &["http", "pipeline", "render", "store", "source", "app"],
        ),
    ] {
        let deps = graph.get(module).cloned().unwrap_or_default();
        assert!(graph.contains_key(module), "module {module} was not found");
        for n in never {
            assert!(
                !deps.contains(*n),
                "{module} imports {n}: they must never meet"
            );
        }
    }
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_owned());
        for d in graph.get(m).into_iter().flatten() {
            visit(d, graph, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_reference_parser_sees_lists_and_paths() {
    let refs =
        crate_refs("use crate::{app::App, store::{Store, index}};\nlet x = crate::key::f();");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["app".to_owned(), "key".to_owned(), "store".to_owned()]
    );
}

/// `unsafe` is denied at the crate root and allowed only in the FFI and SIMD modules, and every
/// block there says why it holds (a `SAFETY` comment within the lines above it).
#[test]
fn unsafe_only_where_allowed_and_every_block_explained() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    assert!(
        lib.contains("#![deny(unsafe_code)]"),
        "the crate root denies unsafe code"
    );
    let allowed = [
        "sys.rs",
        "render/decode/libjpeg/mod.rs",
        "render/decode/libjpeg/raw.rs",
        "render/decode/libjpeg/transcode.rs",
        "render/decode/jpeg_simd.rs",
        "render/decode/jp2/ffi.rs",
        "render/encode/jp2.rs",
    ];
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut blocks = 0;
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(f).expect("read");
        let allows = text.contains("#![allow(unsafe_code)]");
        assert!(
            !allows || allowed.contains(&rel.as_str()),
            "{rel} allows unsafe code"
        );
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let opens_block = code.contains("unsafe {") || code.trim_end().ends_with("= unsafe");
            if !opens_block {
                continue;
            }
            assert!(
                allows,
                "{rel}:{}: unsafe outside the allowed modules",
                i + 1
            );
            blocks += 1;
            let above = &lines[i.saturating_sub(18)..=i];
            assert!(
                above.iter().any(|l| l.contains("SAFETY")),
                "{rel}:{}: an unsafe block without a SAFETY comment",
                i + 1
            );
        }
    }
    assert!(blocks > 10, "the walk found the unsafe blocks ({blocks})");
}
