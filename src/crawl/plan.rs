//! What a crawl renders, pure: for one image and API version, the requests viewers will send, as
//! typed [`ImageRequest`]s in the URL shapes OpenSeadragon uses (tiles `x,y,w,h` clipped at the
//! edges, sizes `w,h` in 3.0 and `w,` in 2.1 and 1.1), ordered so a half-done job already helps:
//! every `sizes` entry and the thumbnails first, then tiles from the coarsest level to full size.
//! And the identifiers a Presentation manifest references.

use crate::iiif::canonical::ImageSize;
use crate::iiif::info::{scale_factors, sizes, tile_within};
use crate::iiif::parse::{
    decode_segment, parse_image_params, ImageRequest, Part, RegionSpec, Rotation, SizeKind,
    SizeSpec,
};
use crate::iiif::{ApiVersion, Format, Limits, Quality};

/// One planned request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Planned {
    /// Ordering class: 0 = sizes and thumbnails, then coarse levels before fine ones.
    pub(crate) priority: u32,
    /// Identifier.
    pub(crate) identifier: String,
    /// The request, as a viewer would send it.
    pub(crate) request: ImageRequest,
}

/// What is the same for every image of a job.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlanOptions<'a> {
    /// Tile edge (info.json `tiles`).
    pub(crate) tile: u32,
    /// Server limits (info.json `sizes` respect them).
    pub(crate) limits: &'a Limits,
    /// Scale factors to warm; `None` = all.
    pub(crate) levels: Option<&'a [u32]>,
    /// Extra thumbnail sizes in 3.0 syntax (validated when the job was submitted).
    pub(crate) thumbnails: &'a [String],
}

/// Plan the requests that warm one image.
pub(crate) fn plan_image(
    identifier: &str,
    size: ImageSize,
    version: ApiVersion,
    format: Format,
    opts: &PlanOptions<'_>,
) -> Vec<Planned> {
    let request = |region: RegionSpec, size: SizeKind| ImageRequest {
        version,
        region,
        size: SizeSpec {
            kind: size,
            upscale: false,
        },
        rotation: Rotation {
            mirror: false,
            degrees: 0.0,
        },
        quality: Quality::Default,
        format,
    };
    let mut out = Vec::new();
    let mut push = |priority: u32, request: ImageRequest| {
        out.push(Planned {
            priority,
            identifier: identifier.to_owned(),
            request,
        });
    };
    for t in opts.thumbnails {
        if let Ok(mut r) =
            parse_image_params(ApiVersion::V3, "full", t, "0", "default.jpg", Format::Jpg)
        {
            r.version = version;
            r.format = format;
            push(0, r);
        }
    }
    let sized = |w: u32, h: u32| {
        if version == ApiVersion::V3 {
            SizeKind::Exact(w, h)
        } else {
            SizeKind::Width(w)
        }
    };
    // The tile info.json advertises, so the crawl warms exactly what viewers will ask for.
    let tile = tile_within(opts.tile, opts.limits);
    for (w, h) in sizes(size, tile, opts.limits) {
        push(0, request(RegionSpec::Full, sized(w, h)));
    }
    let factors = scale_factors(size, tile);
    let n = factors.len() as u32;
    for (i, s) in factors.iter().enumerate().rev() {
        if opts.levels.is_some_and(|l| !l.contains(s)) {
            continue;
        }
        let span = u64::from(tile) * u64::from(*s);
        let (iw, ih) = (u64::from(size.width), u64::from(size.height));
        for y in (0..ih).step_by(span as usize) {
            for x in (0..iw).step_by(span as usize) {
                let (w, h) = (span.min(iw - x), span.min(ih - y));
                let (sw, sh) = (w.div_ceil(u64::from(*s)), h.div_ceil(u64::from(*s)));
                let region = RegionSpec::Pixels {
                    x: x as u32,
                    y: y as u32,
                    w: w as u32,
                    h: h as u32,
                };
                // Coarse levels (large scale factors) first: priority grows towards full resolution.
                push(
                    1 + n - i as u32,
                    request(region, sized(sw as u32, sh as u32)),
                );
            }
        }
    }
    out
}

/// Identifiers of this server's image services referenced by a Presentation manifest or collection:
/// every `id`/`@id` whose path contains `{prefix}/{1|2|3}/{identifier}`. With `public_base`, only
/// URLs under it count.
pub(crate) fn manifest_identifiers(
    manifest: &serde_json::Value,
    prefix: &str,
    public_base: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![manifest];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if let (true, Some(url)) = (k == "id" || k == "@id", v.as_str()) {
                        if let Some(id) = service_identifier(url, prefix, public_base) {
                            if !out.contains(&id) {
                                out.push(id);
                            }
                        }
                    }
                    stack.push(v);
                }
            }
            serde_json::Value::Array(items) => stack.extend(items.iter()),
            _ => {}
        }
    }
    out
}

fn service_identifier(url: &str, prefix: &str, public_base: &str) -> Option<String> {
    if !public_base.is_empty() && !url.starts_with(public_base) {
        return None;
    }
    let path = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
    let path = format!("/{path}");
    let after = path.split_once(&format!("{prefix}/"))?.1;
    let (version, rest) = after.split_once('/')?;
    ApiVersion::from_path_segment(version)?;
    let encoded = rest.split('/').next()?;
    decode_segment(encoded, Part::Identifier)
        .ok()
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iiif::canonical::CanonicalRequest;

    fn path(p: &Planned, size: ImageSize) -> String {
        CanonicalRequest::resolve(&p.request, size, &Limits::default())
            .map(|c| c.to_path())
            .unwrap_or_else(|e| format!("invalid: {e}"))
    }

    #[test]
    fn plan_covers_levels_coarse_first() {
        let size = ImageSize {
            width: 6000,
            height: 4000,
        };
        let limits = Limits::default();
        let thumbs = [",120".to_string()];
        let opts = PlanOptions {
            tile: 512,
            limits: &limits,
            levels: None,
            thumbnails: &thumbs,
        };
        let p = plan_image("a", size, ApiVersion::V3, Format::Jpg, &opts);
        // 96 + 24 + 6 + 2 + 1 tiles, 5 sizes, 1 thumbnail.
        assert_eq!(p.len(), 129 + 5 + 1);
        assert_eq!(path(&p[0], size), "full/180,120/0/default.jpg");
        assert!(p.windows(2).all(|w| w[0].priority <= w[1].priority));
        assert_eq!(
            p.last().map(|x| path(x, size)),
            Some("5632,3584,368,416/max/0/default.jpg".into())
        );
        // Every planned request is valid for the image.
        assert!(p.iter().all(|x| !path(x, size).starts_with("invalid")));
        let opts = PlanOptions {
            tile: 512,
            limits: &limits,
            levels: Some(&[8]),
            thumbnails: &[],
        };
        let v2 = plan_image("a", size, ApiVersion::V2, Format::Jpg, &opts);
        assert_eq!(v2.len(), 5 + 2);
        assert!(v2.iter().any(|x| x.request.region
            == RegionSpec::Pixels {
                x: 4096,
                y: 0,
                w: 1904,
                h: 4000
            }
            && x.request.size.kind == SizeKind::Width(238)));
    }

    #[test]
    fn manifests_name_our_services_only() {
        let m = serde_json::json!({
            "items": [{"items": [{"items": [{"body": {"service": [
                {"id": "https://img.example.org/iiif/3/book%2Fp1", "type": "ImageService3"},
                {"@id": "https://img.example.org/iiif/2/p2/info.json"},
                {"id": "https://elsewhere.org/images/x"}
            ]}}]}]}]
        });
        let ids = manifest_identifiers(&m, "/iiif", "");
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"book/p1".to_string()) && ids.contains(&"p2".to_string()));
        assert!(manifest_identifiers(&m, "/iiif", "https://other.org/iiif").is_empty());
    }
}
