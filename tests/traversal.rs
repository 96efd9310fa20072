//! Path and request safety: over a hundred traversal and injection attempts. Nothing outside the image
//! root is ever read, and nothing the client sent is reflected unescaped (info.json `id`, Link headers).

use crate::common::Server;

const SECRET: &[u8] = b"TOP-SECRET-OUTSIDE-THE-ROOT";

fn attempts() -> Vec<String> {
    let dots = [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e.",
        "%252e%252e",
        "%c0%ae%c0%ae",
        "..%00",
        "...",
        "..;",
    ];
    let seps = ["/", "%2f", "%2F", "%5c", "%5C", "\\", "%252f", "%c0%af"];
    let targets = ["secret", "secret.png", "images/../secret.png", "etc/passwd"];
    let mut out = Vec::new();
    for d in dots {
        for sep in seps {
            out.push(format!("/iiif/3/{d}{sep}secret/info.json"));
        }
    }
    for t in targets {
        let encoded = t.replace('/', "%2F");
        out.push(format!("/iiif/3/..%2F{encoded}/info.json"));
        out.push(format!(
            "/iiif/3/..%2F..%2F{encoded}/full/max/0/default.jpg"
        ));
        out.push(format!(
            "/iiif/2/collection%2F..%2F..%2F{encoded}/info.json"
        ));
    }
    for abs in [
        "%2Fetc%2Fpasswd",
        "%2Ftmp",
        "%2F",
        "%2F%2F",
        "file:%2F%2F%2Fetc%2Fpasswd",
        "C:%5Cwindows",
    ] {
        out.push(format!("/iiif/3/{abs}/info.json"));
    }
    for nul in ["chart%00", "%00chart", "chart%00.png", "chart.jpg%00.png"] {
        out.push(format!("/iiif/3/{nul}/info.json"));
    }
    for inject in [
        "chart%0d%0aSet-Cookie:%20x=1",
        "chart%0aLocation:%20http://evil",
        "chart%09tab",
        "%1b[31m",
    ] {
        out.push(format!("/iiif/3/{inject}/info.json"));
        out.push(format!("/iiif/3/{inject}"));
    }
    out.push(format!("/iiif/3/{}/info.json", "a".repeat(5000)));
    out.push(format!("/iiif/3/{}/info.json", "..%2F".repeat(500)));
    out.push(format!("/iiif/3/{}/info.json", "%2e".repeat(2000)));
    out.push("/iiif/3/leak/info.json".into());
    out.push("/iiif/3/leak/full/max/0/default.png".into());
    out.push("/iiif/3/outdir%2Fsecret/info.json".into());
    out.push("/iiif/3/outdir%2Fsecret.png/full/max/0/default.png".into());
    out.push("/../../secret.png".into());
    out.push("/iiif/../secret.png".into());
    out.push("/iiif/3/./chart/info.json".into());
    out.push("/iiif/3/.%2Fchart/info.json".into());
    out.push("/iiif/3/collection%2F.%2Fpage/info.json".into());
    out
}

#[test]
fn traversal_and_injection_attempts_are_refused() {
    let s = Server::start();
    // A secret next to the image root, a symlinked file and a symlinked directory pointing at it.
    let outside = s.images.parent().expect("parent").to_path_buf();
    let secret_png = {
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("png");
        bytes.extend_from_slice(SECRET);
        bytes
    };
    std::fs::write(outside.join("secret.png"), &secret_png).expect("secret");
    std::fs::write(outside.join("secret"), SECRET).expect("secret");
    std::os::unix::fs::symlink(outside.join("secret.png"), s.images.join("leak.png"))
        .expect("symlink");
    std::os::unix::fs::symlink(&outside, s.images.join("outdir")).expect("dir symlink");
    let list = attempts();
    assert!(list.len() >= 100, "{} attempts", list.len());
    let mut refused = 0;
    for url in &list {
        let r = s.get(url);
        assert!(
            (400..500).contains(&r.status),
            "{url} -> {} {}",
            r.status,
            r.text()
        );
        assert!(
            !r.body.windows(SECRET.len()).any(|w| w == SECRET),
            "{url} leaked the secret"
        );
        for (name, value) in &r.headers {
            assert!(
                !name.eq_ignore_ascii_case("set-cookie"),
                "{url}: injected header"
            );
            assert!(
                !value.contains('\n') && !value.contains('\r'),
                "{url}: header {name}"
            );
            assert!(
                !(name == "location" && value.contains("evil")),
                "{url}: injected redirect"
            );
        }
        refused += 1;
    }
    // Awkward but legal identifiers are escaped wherever they are echoed.
    let weird = "we\"ird <id>&'x";
    std::fs::copy(
        s.images.join("rings.png"),
        s.images.join(format!("{weird}.png")),
    )
    .expect("copy");
    let enc = "we%22ird%20%3Cid%3E%26%27x";
    let info = s.get(&format!("/iiif/3/{enc}/info.json"));
    assert_eq!(info.status, 200);
    assert!(
        !info.text().contains('<') && !info.text().contains("we\\\"ird"),
        "{}",
        info.text()
    );
    assert_eq!(info.json()["id"], format!("http://{}/iiif/3/{enc}", s.addr));
    let img = s.get(&format!("/iiif/3/{enc}/full/10,/0/default.png"));
    let link = img.header("link").unwrap_or("");
    assert!(
        link.contains(enc) && !link.contains('"') || link.matches('"').count() == 4,
        "{link}"
    );
    eprintln!("traversal attempts refused: {refused}");
}
