//! The tile URLs real viewers send, replayed: OpenSeadragon 4.1/5.0 (`w,` for 2.1, `w,h` for
//! 3.0), OpenSeadragon 6 (`w,h` for both) and Leaflet-IIIF 2.0 (`w,` for 2.1, `w,h` for 3.0), each
//! model written from the client's own `getTileUrl` (iiiftilesource.js, leaflet-iiif.js) over
//! iiifd's info.json, on images of awkward sizes. Every answer must be the size the client laid
//! the tile out at, or the viewer stretches it by a pixel.
//!
//! Two cases cannot be met by any server, both on 1-pixel-wide images: a 2.1 `w,` request of width
//! 1 names no scale, and the last row of tiles is the same URL at two levels that lay it out at two
//! heights; and OpenSeadragon sends 2.1 `full` (the region at its own size) whenever the tile's
//! width is the image's, though it lays a reduced level's tile out smaller. The test finds those
//! URLs itself, counts them, and asks for one of the layouts, or for `full` the spec's answer.

use crate::common::Server;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    Osd5,
    Osd6,
    Leaflet,
}

/// What a client asks for at one image: the URL tail (region/size) and the size it lays out.
type Plan = Vec<(String, (u32, u32))>;

/// Which clients ask for a URL, and the size each lays it out at.
type Asks = Vec<(Client, (u32, u32))>;

/// OpenSeadragon's IIIFTileSource.getTileUrl for every tile of every level.
fn openseadragon(client: Client, v3: bool, w: u32, h: u32, tile: u32, max_sf: u32) -> Plan {
    let max_level = max_sf.trailing_zeros();
    let mut plan = Vec::new();
    for level in 0..=max_level {
        let div = 1u32 << (max_level - level); // 1 / scale
        let (lw, lh) = (w.div_ceil(div), h.div_ceil(div));
        let size = |sw: u32, sh: u32| -> String {
            if !v3 && sw == w {
                "full".into()
            } else if v3 && sw == w && sh == h {
                "max".into()
            } else if v3 || client == Client::Osd6 {
                format!("{sw},{sh}")
            } else {
                format!("{sw},")
            }
        };
        if lw < tile && lh < tile {
            plan.push((format!("full/{}", size(lw, lh)), (lw, lh)));
            continue;
        }
        let span = tile * div; // Math.round(tileWidth / scale)
        for ty in 0..lh.div_ceil(tile) {
            for tx in 0..lw.div_ceil(tile) {
                let (x, y) = (tx * span, ty * span);
                let (rw, rh) = (span.min(w - x), span.min(h - y));
                let region = if x == 0 && y == 0 && rw == w && rh == h {
                    "full".to_owned()
                } else {
                    format!("{x},{y},{rw},{rh}")
                };
                let (sw, sh) = (tile.min(lw - tx * tile), tile.min(lh - ty * tile));
                plan.push((format!("{region}/{}", size(sw, sh)), (sw, sh)));
            }
        }
    }
    plan
}

/// Leaflet-IIIF 2.0's getTileUrl for every tile of every zoom.
fn leaflet(v3: bool, w: u32, h: u32, tile: u32) -> Plan {
    let zooms = |side: u32| (f64::from(side) / f64::from(tile)).log2().ceil().max(0.0) as u32;
    let max_zoom = zooms(w).max(zooms(h));
    let mut plan = Vec::new();
    for zoom in 0..=max_zoom {
        let scale = 1u32 << (max_zoom - zoom);
        let base = tile * scale;
        for ty in 0..h.div_ceil(base) {
            for tx in 0..w.div_ceil(base) {
                let (x, y) = (tx * base, ty * base);
                let (rw, rh) = ((x + base).min(w) - x, (y + base).min(h) - y);
                let (sw, sh) = (rw.div_ceil(scale), rh.div_ceil(scale));
                let size = if v3 {
                    format!("{sw},{sh}")
                } else {
                    format!("{sw},")
                };
                plan.push((format!("{x},{y},{rw},{rh}/{size}"), (sw, sh)));
            }
        }
    }
    plan
}

fn dimensions(body: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(body))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

#[test]
fn viewers_tiles_come_back_at_the_size_they_laid_out() {
    let s = Server::start();
    let sizes = [(1001, 777), (1009, 997), (1, 1500), (10_000, 513), (3, 2)];
    for &(w, h) in &sizes {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 251) as u8, (y % 241) as u8, 90])
        });
        img.save(s.images.join(format!("i{w}x{h}.png")))
            .expect("test image");
    }
    let mut checked = 0;
    let mut ambiguous = 0;
    let mut full_mismatch = 0;
    for &(w, h) in &sizes {
        let id = format!("i{w}x{h}");
        for (version, v3) in [("2", false), ("3", true)] {
            let info: serde_json::Value =
                serde_json::from_slice(&s.get(&format!("/iiif/{version}/{id}/info.json")).body)
                    .expect("info.json");
            let tile = info["tiles"][0]["width"].as_u64().expect("tile width") as u32;
            let max_sf = info["tiles"][0]["scaleFactors"]
                .as_array()
                .and_then(|a| a.iter().filter_map(|v| v.as_u64()).max())
                .expect("scale factors") as u32;
            // URL -> every (client, layout) that asks for it.
            let mut wanted: BTreeMap<String, Asks> = BTreeMap::new();
            for client in [Client::Osd5, Client::Osd6, Client::Leaflet] {
                let plan = match client {
                    Client::Leaflet => leaflet(v3, w, h, tile),
                    _ => openseadragon(client, v3, w, h, tile, max_sf),
                };
                for (tail, layout) in plan {
                    wanted.entry(tail).or_default().push((client, layout));
                }
            }
            for (tail, asks) in wanted {
                let path = format!("/iiif/{version}/{id}/{tail}/0/default.png");
                let r = s.get(&path);
                assert_eq!(r.status, 200, "{path}: {}", r.text());
                let got = dimensions(&r.body).expect("a png");
                let mut layouts: Vec<(u32, u32)> = asks.iter().map(|(_, l)| *l).collect();
                layouts.sort_unstable();
                layouts.dedup();
                let (region, size) = tail.split_once('/').expect("region/size");
                let region_size = match region {
                    "full" => (w, h),
                    r => {
                        let n: Vec<u32> = r.split(',').filter_map(|v| v.parse().ok()).collect();
                        (n[2], n[3])
                    }
                };
                if size == "full" && layouts != [region_size] {
                    // OpenSeadragon's `full` for a tile as wide as the image: the spec's answer.
                    assert_eq!(got, region_size, "{path}: `full` is the region's size");
                    assert_eq!(
                        w, 1,
                        "{path}: only a 1-pixel-wide image makes OpenSeadragon do this"
                    );
                    full_mismatch += 1;
                } else if layouts.len() > 1 {
                    // The same URL laid out at two sizes: only a 1-pixel `w,` can be that.
                    assert!(!v3 && tail.ends_with("/1,"), "{path}: {asks:?}");
                    assert!(
                        layouts.contains(&got),
                        "{path}: {got:?} is none of {asks:?}"
                    );
                    ambiguous += 1;
                } else {
                    assert_eq!(got, layouts[0], "{path} for {asks:?}");
                }
                checked += 1;
            }
        }
    }
    eprintln!(
        "{checked} tile URLs checked; {ambiguous} laid out at two sizes by the clients, \
         {full_mismatch} sent as `full` but laid out smaller"
    );
    assert!(checked > 150, "{checked}");
}
