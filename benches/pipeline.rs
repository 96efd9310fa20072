//! The render pipeline, stage by stage and end to end, per source format: `cargo bench --bench
//! pipeline`. The sources are generated (a 4000x3000 photo-like picture with noise, so entropy
//! decoding costs what it costs on real scans), written to a temp dir, and rendered through the same
//! `render::render` the server calls, with the decoded cache off so every iteration is cold.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use iiifd::iiif::canonical::{CanonicalRequest, ImageSize, Rect};
use iiifd::iiif::parse::{parse_route, Route};
use iiifd::iiif::{Format, Limits};
use iiifd::internals;
use image::{DynamicImage, RgbImage};
use std::hint::black_box;

const W: u32 = 4000;
const H: u32 = 3000;

fn picture() -> RgbImage {
    let mut seed = 1u32;
    RgbImage::from_fn(W, H, |x, y| {
        // xorshift noise on gradients: incompressible enough to look like a scan.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed % 16) as u8;
        image::Rgb([
            ((x * 255 / W) as u8).saturating_add(n),
            ((y * 255 / H) as u8).saturating_add(n),
            (((x + y) / 31) as u8).saturating_add(n),
        ])
    })
}

fn request(path: &str, size: ImageSize) -> CanonicalRequest {
    let route = parse_route(path, Format::Jpg).expect("bench URL parses");
    let Route::Image { request, .. } = route else {
        panic!("not an image request: {path}");
    };
    CanonicalRequest::resolve(&request, size, &Limits::default()).expect("bench URL resolves")
}

fn bench(c: &mut Criterion) {
    let pic = picture();
    let jpg = internals::encode(DynamicImage::ImageRgb8(pic.clone()), Format::Jpg).expect("encode");
    let png = internals::encode(DynamicImage::ImageRgb8(pic.clone()), Format::Png).expect("png");
    let size = ImageSize {
        width: W,
        height: H,
    };

    let mut g = c.benchmark_group("decode_jpeg_4000x3000");
    g.sample_size(10);
    for k in [0u32, 1, 3] {
        g.bench_function(format!("scale_1_{}", 1 << k), |b| {
            b.iter(|| internals::jpeg_decode(black_box(&jpg), k, None, 1 << 30).expect("decode"))
        });
    }
    let tile = Rect {
        x: 2048,
        y: 1536,
        w: 512,
        h: 512,
    };
    g.bench_function("crop_512_full_scale", |b| {
        b.iter(|| internals::jpeg_decode(black_box(&jpg), 0, Some(tile), 1 << 30).expect("decode"))
    });
    g.finish();

    let mut g = c.benchmark_group("resize");
    let src = DynamicImage::ImageRgb8(image::imageops::crop_imm(&pic, 0, 0, 1024, 1024).to_image());
    let whole = Rect {
        x: 0,
        y: 0,
        w: 1024,
        h: 1024,
    };
    g.bench_function("fast_image_resize_1024_to_512", |b| {
        b.iter(|| internals::resize(black_box(&src), whole, 512, 512).expect("resize"))
    });
    g.bench_function("image_crate_triangle_1024_to_512", |b| {
        b.iter(|| src.resize_exact(512, 512, image::imageops::FilterType::Triangle))
    });
    g.finish();

    let mut g = c.benchmark_group("encode_512");
    let out = DynamicImage::ImageRgb8(image::imageops::crop_imm(&pic, 0, 0, 512, 512).to_image());
    for (name, format) in [
        ("jpg", Format::Jpg),
        ("png", Format::Png),
        ("webp", Format::Webp),
        ("gif", Format::Gif),
        ("tif", Format::Tif),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || out.clone(),
                |img| internals::encode(img, format).expect("encode"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("render_cold");
    g.sample_size(10);
    for (name, source, path) in [
        (
            "jpg_tile_sf1",
            &jpg,
            "3/p/2048,1536,512,512/512,512/0/default.jpg",
        ),
        (
            "jpg_tile_sf4",
            &jpg,
            "3/p/2048,0,2048,2048/512,512/0/default.jpg",
        ),
        ("jpg_thumb_256", &jpg, "3/p/full/!256,256/0/default.jpg"),
        ("png_thumb_256", &png, "3/p/full/!256,256/0/default.jpg"),
    ] {
        let req = request(path, size);
        g.bench_function(name, |b| {
            b.iter(|| black_box(internals::render(source, &req).expect("render")))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
