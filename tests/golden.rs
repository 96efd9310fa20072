//! The canonical-form golden table, `tests/golden/canonical.txt`.

use iiifd::error::Error;
use iiifd::iiif::canonical::{CanonicalRequest, ImageSize};
use iiifd::iiif::parse::parse_image_params;
use iiifd::iiif::{ApiVersion, Format, Limits};
use std::collections::HashMap;

fn resolve(size: ImageSize, version: ApiVersion, params: &str) -> Result<CanonicalRequest, Error> {
    let p: Vec<&str> = params.split('/').collect();
    assert_eq!(p.len(), 4, "{params}");
    let req = parse_image_params(version, p[0], p[1], p[2], p[3], Format::Jpg)?;
    Ok(CanonicalRequest::resolve(&req, size, &Limits::default())?)
}

#[test]
fn golden_canonical_table() {
    let text = include_str!("golden/canonical.txt");
    let mut groups: HashMap<String, (String, String)> = HashMap::new();
    let mut checked = 0;
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (lhs, rhs) = line
            .split_once(" -> ")
            .unwrap_or_else(|| panic!("line {n}: no ' -> '"));
        let mut l = lhs.split_whitespace();
        let (dims, version, params) = (
            l.next().unwrap_or(""),
            l.next().unwrap_or(""),
            l.next().unwrap_or(""),
        );
        let (w, h) = dims
            .split_once('x')
            .unwrap_or_else(|| panic!("line {n}: bad size"));
        let size = ImageSize {
            width: w.parse().expect("width"),
            height: h.parse().expect("height"),
        };
        let version = ApiVersion::from_path_segment(version)
            .unwrap_or_else(|| panic!("line {n}: bad version"));
        let mut r = rhs.split_whitespace();
        let expected = r.next().unwrap_or("");
        let group = r
            .next()
            .map(|g| g.trim_matches(|c| c == '[' || c == ']').to_owned());
        match resolve(size, version, params) {
            Ok(c) => {
                assert_eq!(c.to_path(), expected, "line {n}: {line}");
                // Idempotence: the canonical form resolves to itself.
                let again = resolve(size, version, &c.to_path())
                    .unwrap_or_else(|e| panic!("line {n}: {e}"));
                assert_eq!(again.key_material(), c.key_material(), "line {n}");
                if let Some(g) = group {
                    let material = c.key_material();
                    match groups.get(&g) {
                        Some((m, first)) => {
                            assert_eq!(m, &material, "line {n} should share a key with {first}")
                        }
                        None => {
                            for (other, (m, first)) in &groups {
                                assert_ne!(
                                    m, &material,
                                    "line {n} ([{g}]) collides with [{other}] ({first})"
                                );
                            }
                            groups.insert(g, (material, line.to_owned()));
                        }
                    }
                }
            }
            Err(e) => assert_eq!(
                e.status().as_u16().to_string(),
                expected,
                "line {n}: {line}: {e}"
            ),
        }
        checked += 1;
    }
    assert!(
        checked >= 60,
        "the table must keep at least 60 lines, has {checked}"
    );
}
