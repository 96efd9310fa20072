//! The image information document, `info.json` (3.0 §5, 2.1 §5, 1.1 §5), built from an image's size,
//! the server limits and the tile size. Pure: the caller supplies the service's public base URI.
//!
//! Lists only what iiifd really does: every feature, quality and format named here is exercised by the
//! conformance run in CI.

use super::canonical::{fit, level_height, ImageSize};
use super::{ApiVersion, Format, Limits};
use serde::Serialize;

/// Features beyond level 2 that iiifd supports, with their 3.0 names (2.1 names differ where noted).
const EXTRA_FEATURES_V3: [&str; 5] = [
    "canonicalLinkHeader",
    "mirroring",
    "profileLinkHeader",
    "rotationArbitrary",
    "sizeUpscaling",
];
const SUPPORTS_V2: [&str; 6] = [
    "canonicalLinkHeader",
    "mirroring",
    "profileLinkHeader",
    "regionSquare",
    "rotationArbitrary",
    "sizeAboveFull",
];

/// What an info.json is built from.
#[derive(Clone, Debug)]
pub struct InfoInput<'a> {
    /// The image service's base URI: `{scheme}://{host}{prefix}/{version}/{encoded identifier}`.
    pub id: &'a str,
    /// Full image size.
    pub size: ImageSize,
    /// Server limits.
    pub limits: Limits,
    /// Tile edge in pixels.
    pub tile: u32,
    /// Properties the institution adds: from the configuration (`rights`, `preferredFormats`) and the
    /// image's sidecar, already validated by [`extra_properties`]. Each version lists those it defines.
    pub extras: &'a Extras,
    /// The IIIF Authorization Flow 2.0 probe service of a restricted image, listed first in
    /// `service` (3.0 and 2.1; 1.1 has no services).
    pub auth: Option<&'a serde_json::Value>,
}

/// The Auth 2.0 context, which a 3.0 info.json lists before the image context (Auth 2.0 §2.2).
const AUTH_CONTEXT: &str = "http://iiif.io/api/auth/2/context.json";

/// A 3.0 `@context`: the image context alone, or after the Auth 2.0 one.
#[derive(Serialize)]
#[serde(untagged)]
enum Context3 {
    One(&'static str),
    Two([&'static str; 2]),
}

/// Extra info.json properties, in the order they are written. Keys are the 3.0 names; 2.1 writes
/// `rights` as `license` and the 2.1-only `attribution` and `logo` as they are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extras(Vec<(String, serde_json::Value)>);

/// Properties an institution may add (3.0 §5.6 rights, §5.7 linking; 2.1 §5.3), with the versions
/// that have them. Everything else in info.json is computed by the server and cannot be overridden.
const EXTRA_KEYS: [(&str, bool, bool); 7] = [
    // (name, in 3.0, in 2.1)
    ("rights", true, true),
    ("preferredFormats", true, false),
    ("partOf", true, false),
    ("seeAlso", true, false),
    ("service", true, true),
    ("attribution", false, true),
    ("logo", false, true),
];

/// Why an extra property was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraError(pub String);

impl std::fmt::Display for ExtraError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Extras {
    /// No extra property.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// These extras, with `over`'s properties replacing any of the same name.
    pub fn merged(&self, over: &Extras) -> Extras {
        let mut out: Vec<(String, serde_json::Value)> = self
            .0
            .iter()
            .filter(|(k, _)| !over.0.iter().any(|(o, _)| o == k))
            .cloned()
            .collect();
        out.extend(over.0.iter().cloned());
        Extras(out)
    }

    fn for_version(&self, version: ApiVersion) -> Vec<(&'static str, &serde_json::Value)> {
        let mut out = Vec::new();
        for (key, value) in &self.0 {
            let Some(&(name, v3, v2)) = EXTRA_KEYS.iter().find(|(n, _, _)| n == key) else {
                continue;
            };
            match version {
                ApiVersion::V3 if v3 => out.push((name, value)),
                ApiVersion::V2 if v2 => {
                    out.push((if name == "rights" { "license" } else { name }, value))
                }
                _ => {}
            }
        }
        out
    }
}

/// Validate extra properties (from the configuration or a sidecar object): only the names above;
/// `rights` an http(s) URI (3.0 §5.6: a license or rights statement); `preferredFormats` a non-empty
/// list of formats this server renders; `partOf`, `seeAlso`, `service` arrays of objects with an `id`
/// or `@id`; `attribution` a string or array; `logo` a URI or object.
pub fn extra_properties(
    properties: &serde_json::Map<String, serde_json::Value>,
) -> Result<Extras, ExtraError> {
    use serde_json::Value;
    let mut out = Vec::new();
    for (key, value) in properties {
        if !EXTRA_KEYS.iter().any(|(n, _, _)| n == key) {
            let allowed: Vec<&str> = EXTRA_KEYS.iter().map(|(n, _, _)| *n).collect();
            return Err(ExtraError(format!(
                "\"{key}\" cannot be added to info.json (allowed: {})",
                allowed.join(", ")
            )));
        }
        let uri = |v: &Value| {
            v.as_str()
                .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
        };
        let linked = |v: &Value| {
            v.as_array().is_some_and(|a| {
                a.iter().all(|o| {
                    o.as_object()
                        .is_some_and(|o| o.get("id").or_else(|| o.get("@id")).is_some_and(uri))
                })
            })
        };
        let ok = match key.as_str() {
            "rights" => uri(value),
            "preferredFormats" => value.as_array().is_some_and(|a| {
                !a.is_empty()
                    && a.iter().all(|f| {
                        f.as_str()
                            .and_then(Format::from_extension)
                            .is_some_and(Format::is_rendered)
                    })
            }),
            "partOf" | "seeAlso" | "service" => linked(value),
            "attribution" => value.is_string() || value.is_array(),
            "logo" => uri(value) || value.is_object(),
            _ => false,
        };
        if !ok {
            return Err(ExtraError(format!(
                "\"{key}\" has a value info.json cannot carry: {value}"
            )));
        }
        out.push((key.clone(), value.clone()));
    }
    Ok(Extras(out))
}

/// Scale factors 1, 2, 4, ... down to the first level whose whole image fits in one tile.
pub fn scale_factors(size: ImageSize, tile: u32) -> Vec<u32> {
    let tile = u64::from(tile.max(1));
    let mut out = vec![1u32];
    let mut s: u64 = 1;
    while (u64::from(size.width).div_ceil(s) > tile || u64::from(size.height).div_ceil(s) > tile)
        && s < 1 << 30
    {
        s *= 2;
        out.push(s as u32);
    }
    out
}

/// The tile edge info.json advertises: the configured (or the source's native) tile, shrunk to fit the
/// limits, because every listed tile must be a request the server answers (3.0 §5.2: sizes and tiles
/// MUST be within `maxWidth`, `maxHeight` and `maxArea`).
pub fn tile_within(tile: u32, limits: &Limits) -> u32 {
    let side = u32::try_from(limits.max_area.isqrt()).unwrap_or(u32::MAX);
    tile.min(limits.max_width)
        .min(limits.max_height)
        .min(side)
        .max(1)
}

/// The image's size at each scale factor, smallest first, keeping only those within the limits. The
/// width is OpenSeadragon's level width (`ceil(width / 2^k)`) and the height its level height
/// (`ceil(height / 2^k)`), which is what a 2.1 `w,` request at that width returns
/// ([`level_height`]): 2.1 clients ask for a listed size as `w,` and must get exactly the size
/// listed. Never empty: when no level fits the limits, the `max` size is listed (OpenSeadragon
/// throws on `"sizes": []`).
pub fn sizes(size: ImageSize, tile: u32, limits: &Limits) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = scale_factors(size, tile)
        .into_iter()
        .rev()
        .map(|s| {
            let w = size.width.div_ceil(s);
            (w, level_height(size.width, size.height, w, Some(tile)))
        })
        .filter(|&(w, h)| limits.allows(w, h))
        .collect();
    out.dedup();
    if out.is_empty() {
        out.push(fit(size.width, size.height, limits));
    }
    out
}

/// [`sizes`] as info.json lists them: with the `max` size last when the limits make it smaller
/// than the image (the largest size a client may ask for, as the 3.0 implementation note computes
/// it). A 2.1 client asks for a listed size as `w,`, so in 2.1 and 1.1 it is listed only when that
/// request returns it; 3.0 clients ask for `w,h`. (Not in [`sizes`], which the crawl warms and
/// admission counts as viewer-shaped: `max` of a large image is neither cheap nor a viewer's.)
fn listed_sizes(
    version: ApiVersion,
    size: ImageSize,
    tile: u32,
    limits: &Limits,
) -> Vec<(u32, u32)> {
    let mut out = sizes(size, tile, limits);
    let max = fit(size.width, size.height, limits);
    let reachable = version == ApiVersion::V3
        || level_height(size.width, size.height, max.0, Some(tile)) == max.1;
    let larger = |&(w, h): &(u32, u32)| (w, h) != max && w <= max.0 && h <= max.1;
    if reachable && out.last().is_some_and(larger) {
        out.push(max);
    }
    out
}

#[derive(Serialize)]
struct Size3 {
    #[serde(rename = "type")]
    kind: &'static str,
    width: u32,
    height: u32,
}

#[derive(Serialize)]
struct Tile3 {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "scaleFactors")]
    scale_factors: Vec<u32>,
    width: u32,
    height: u32,
}

#[derive(Serialize)]
struct Info3<'a> {
    #[serde(rename = "@context")]
    context: Context3,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    protocol: &'static str,
    profile: &'static str,
    width: u32,
    height: u32,
    #[serde(rename = "maxWidth")]
    max_width: u32,
    #[serde(rename = "maxHeight")]
    max_height: u32,
    #[serde(rename = "maxArea")]
    max_area: u64,
    sizes: Vec<Size3>,
    tiles: Vec<Tile3>,

    #[serde(rename = "extraFormats")]
    extra_formats: Vec<&'static str>,
    #[serde(rename = "extraQualities")]
    extra_qualities: [&'static str; 1],
    #[serde(rename = "extraFeatures")]
    extra_features: [&'static str; 5],
}

#[derive(Serialize)]
struct Size2 {
    width: u32,
    height: u32,
}

#[derive(Serialize)]
struct Tile2 {
    #[serde(rename = "scaleFactors")]
    scale_factors: Vec<u32>,
    width: u32,
    height: u32,
}

#[derive(Serialize)]
struct Profile2 {
    formats: Vec<&'static str>,
    supports: [&'static str; 6],
    #[serde(rename = "maxWidth")]
    max_width: u32,
    #[serde(rename = "maxHeight")]
    max_height: u32,
    #[serde(rename = "maxArea")]
    max_area: u64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ProfileEntry2 {
    Uri(&'static str),
    Object(Profile2),
}

#[derive(Serialize)]
struct Info2<'a> {
    #[serde(rename = "@context")]
    context: &'static str,
    #[serde(rename = "@id")]
    id: &'a str,
    protocol: &'static str,
    width: u32,
    height: u32,
    sizes: Vec<Size2>,
    tiles: Vec<Tile2>,
    profile: [ProfileEntry2; 2],
}

#[derive(Serialize)]
struct Info1<'a> {
    #[serde(rename = "@context")]
    context: &'static str,
    #[serde(rename = "@id")]
    id: &'a str,
    width: u32,
    height: u32,
    scale_factors: Vec<u32>,
    tile_width: u32,
    tile_height: u32,
    formats: Vec<&'static str>,
    qualities: [&'static str; 4],
    profile: &'static str,
}

/// Formats beyond level 2's jpg and png.
fn extra_formats() -> Vec<&'static str> {
    Format::RENDERED
        .iter()
        .filter(|f| !matches!(f, Format::Jpg | Format::Png))
        .map(|f| f.extension())
        .collect()
}

/// Build the info.json document for `version`, as compact JSON with `@context` first.
pub fn info_json(version: ApiVersion, input: &InfoInput<'_>) -> String {
    let InfoInput {
        id,
        size,
        limits,
        tile,
        extras,
        auth,
    } = *input;
    let tile = tile_within(tile, &limits);
    let factors = scale_factors(size, tile);
    let sizes = listed_sizes(version, size, tile, &limits);
    let result = match version {
        ApiVersion::V3 => serde_json::to_string(&Info3 {
            context: match auth {
                Some(_) => Context3::Two([AUTH_CONTEXT, version.context_uri()]),
                None => Context3::One(version.context_uri()),
            },
            id,
            kind: "ImageService3",
            protocol: "http://iiif.io/api/image",
            profile: "level2",
            width: size.width,
            height: size.height,
            max_width: limits.max_width,
            max_height: limits.max_height,
            max_area: limits.max_area,
            sizes: sizes
                .into_iter()
                .map(|(width, height)| Size3 {
                    kind: "Size",
                    width,
                    height,
                })
                .collect(),
            tiles: vec![Tile3 {
                kind: "Tile",
                scale_factors: factors,
                width: tile,
                height: tile,
            }],
            extra_formats: extra_formats(),
            extra_qualities: ["bitonal"],
            extra_features: EXTRA_FEATURES_V3,
        }),
        ApiVersion::V2 => serde_json::to_string(&Info2 {
            context: version.context_uri(),
            id,
            protocol: "http://iiif.io/api/image",
            width: size.width,
            height: size.height,
            sizes: sizes
                .into_iter()
                .map(|(width, height)| Size2 { width, height })
                .collect(),
            tiles: vec![Tile2 {
                scale_factors: factors,
                width: tile,
                height: tile,
            }],
            profile: [
                ProfileEntry2::Uri(version.profile_uri()),
                ProfileEntry2::Object(Profile2 {
                    formats: extra_formats(),
                    supports: SUPPORTS_V2,
                    max_width: limits.max_width,
                    max_height: limits.max_height,
                    max_area: limits.max_area,
                }),
            ],
        }),
        ApiVersion::V1 => serde_json::to_string(&Info1 {
            context: version.context_uri(),
            id,
            width: size.width,
            height: size.height,
            scale_factors: factors,
            tile_width: tile,
            tile_height: tile,
            formats: Format::RENDERED.iter().map(|f| f.extension()).collect(),
            qualities: ["native", "color", "grey", "bitonal"],
            profile: version.profile_uri(),
        }),
    };
    // Serialising these plain structs cannot fail; an empty object is still valid JSON if it ever did.
    let mut text = result.unwrap_or_else(|_| "{}".to_owned());
    // The extras after the computed properties, in their own order (the documents above are written
    // from structs so that `@context` comes first and the order is stable).
    let mut extras: Vec<(&str, std::borrow::Cow<'_, serde_json::Value>)> = extras
        .for_version(version)
        .into_iter()
        .map(|(k, v)| (k, std::borrow::Cow::Borrowed(v)))
        .collect();
    if let (Some(auth), false) = (auth, version == ApiVersion::V1) {
        // 2.1 services carry their own context; 3.0 lists it at the top instead.
        let mut probe = auth.clone();
        if let (ApiVersion::V2, Some(obj)) = (version, probe.as_object_mut()) {
            let mut with_context = serde_json::Map::new();
            with_context.insert("@context".into(), AUTH_CONTEXT.into());
            with_context.extend(std::mem::take(obj));
            *obj = with_context;
        }
        match extras.iter_mut().find(|(k, _)| *k == "service") {
            Some((_, services)) => {
                let mut list = vec![probe];
                if let Some(more) = services.as_array() {
                    list.extend(more.iter().cloned());
                }
                *services = std::borrow::Cow::Owned(list.into());
            }
            None => extras.push(("service", std::borrow::Cow::Owned(vec![probe].into()))),
        }
    }
    if !extras.is_empty() && text.ends_with('}') && text.len() > 2 {
        text.pop();
        for (name, value) in extras {
            if let (Ok(k), Ok(v)) = (serde_json::to_string(name), serde_json::to_string(&value)) {
                text.push(',');
                text.push_str(&k);
                text.push(':');
                text.push_str(&v);
            }
        }
        text.push('}');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(v: ApiVersion, w: u32, h: u32) -> Value {
        let input = InfoInput {
            id: "http://x/iiif/3/a",
            size: ImageSize {
                width: w,
                height: h,
            },
            limits: Limits::default(),
            tile: 512,
            extras: &Extras::default(),
            auth: None,
        };
        serde_json::from_str(&info_json(v, &input)).expect("valid JSON")
    }

    #[test]
    fn extras_are_validated_and_written_per_version() {
        let config = serde_json::json!({
            "rights": "http://creativecommons.org/licenses/by/4.0/",
            "preferredFormats": ["webp", "jpg"],
        });
        let sidecar = serde_json::json!({
            "rights": "http://rightsstatements.org/vocab/InC/1.0/",
            "partOf": [{"id": "https://example.org/manifest/1", "type": "Manifest"}],
            "attribution": "Example Museum",
        });
        let config = extra_properties(config.as_object().expect("object")).expect("valid");
        let sidecar = extra_properties(sidecar.as_object().expect("object")).expect("valid");
        let extras = config.merged(&sidecar);
        let input = InfoInput {
            id: "http://x/iiif/3/a",
            size: ImageSize {
                width: 100,
                height: 80,
            },
            limits: Limits::default(),
            tile: 512,
            extras: &extras,
            auth: None,
        };
        let v3: Value = serde_json::from_str(&info_json(ApiVersion::V3, &input)).expect("JSON");
        assert_eq!(
            v3["rights"], "http://rightsstatements.org/vocab/InC/1.0/",
            "sidecar wins"
        );
        assert_eq!(v3["preferredFormats"], serde_json::json!(["webp", "jpg"]));
        assert_eq!(v3["partOf"][0]["type"], "Manifest");
        assert!(v3.get("attribution").is_none(), "2.1 only");
        let v2: Value = serde_json::from_str(&info_json(ApiVersion::V2, &input)).expect("JSON");
        assert_eq!(v2["license"], "http://rightsstatements.org/vocab/InC/1.0/");
        assert_eq!(v2["attribution"], "Example Museum");
        assert!(v2.get("preferredFormats").is_none() && v2.get("rights").is_none());
        let v1: Value = serde_json::from_str(&info_json(ApiVersion::V1, &input)).expect("JSON");
        assert!(v1.get("license").is_none());

        // A restricted image: the Auth 2.0 context first (3.0), the probe service first in
        // `service`, before any the institution lists; 2.1 gives the service its own context.
        let probe =
            serde_json::json!({"id": "http://x/iiif/auth/probe/a", "type": "AuthProbeService2"});
        let linked = extra_properties(
            serde_json::json!({"service": [{"id": "https://example.org/s", "type": "Service"}]})
                .as_object()
                .expect("object"),
        )
        .expect("valid");
        for extras in [Extras::default(), linked] {
            let input = InfoInput {
                auth: Some(&probe),
                extras: &extras,
                ..input.clone()
            };
            let v3: Value = serde_json::from_str(&info_json(ApiVersion::V3, &input)).expect("JSON");
            assert_eq!(
                v3["@context"],
                serde_json::json!([AUTH_CONTEXT, "http://iiif.io/api/image/3/context.json"])
            );
            assert_eq!(v3["service"][0], probe);
            assert_eq!(
                v3["service"].as_array().map(Vec::len),
                Some(1 + usize::from(!extras.is_empty()))
            );
            let v2: Value = serde_json::from_str(&info_json(ApiVersion::V2, &input)).expect("JSON");
            assert_eq!(v2["@context"], "http://iiif.io/api/image/2/context.json");
            assert_eq!(v2["service"][0]["@context"], AUTH_CONTEXT);
            assert_eq!(v2["service"][0]["type"], "AuthProbeService2");
            let v1: Value = serde_json::from_str(&info_json(ApiVersion::V1, &input)).expect("JSON");
            assert!(v1.get("service").is_none());
        }

        for bad in [
            serde_json::json!({"width": 5}),
            serde_json::json!({"id": "http://evil"}),
            serde_json::json!({"rights": "javascript:alert(1)"}),
            serde_json::json!({"preferredFormats": ["pdf"]}),
            serde_json::json!({"preferredFormats": []}),
            serde_json::json!({"partOf": [{"label": "no id"}]}),
        ] {
            assert!(
                extra_properties(bad.as_object().expect("object")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn scale_factors_stop_at_one_tile() {
        assert_eq!(
            scale_factors(
                ImageSize {
                    width: 6000,
                    height: 4000
                },
                512
            ),
            vec![1, 2, 4, 8, 16]
        );
        assert_eq!(
            scale_factors(
                ImageSize {
                    width: 512,
                    height: 100
                },
                512
            ),
            vec![1]
        );
        assert_eq!(
            scale_factors(
                ImageSize {
                    width: 513,
                    height: 100
                },
                512
            ),
            vec![1, 2]
        );
        assert_eq!(
            sizes(
                ImageSize {
                    width: 1001,
                    height: 999
                },
                512,
                &Limits::default()
            ),
            vec![(501, 500), (1001, 999)]
        );
    }

    #[test]
    fn v3_document() {
        let v = parse(ApiVersion::V3, 6000, 4000);
        let text = info_json(
            ApiVersion::V3,
            &InfoInput {
                id: "i",
                size: ImageSize {
                    width: 1,
                    height: 1,
                },
                limits: Limits::default(),
                tile: 512,
                extras: &Extras::default(),
                auth: None,
            },
        );
        assert!(
            text.starts_with("{\"@context\""),
            "@context must come first"
        );
        assert_eq!(v["type"], "ImageService3");
        assert_eq!(v["profile"], "level2");
        assert_eq!(v["width"], 6000);
        assert_eq!(
            v["tiles"][0]["scaleFactors"],
            serde_json::json!([1, 2, 4, 8, 16])
        );
        assert_eq!(v["sizes"][0]["width"], 375);
        // avif and jxl only when built in (cargo features, on by default).
        let mut extra = vec!["gif", "tif", "webp", "jp2"];
        if cfg!(feature = "avif") {
            extra.push("avif");
        }
        if cfg!(feature = "jxl") {
            extra.push("jxl");
        }
        assert_eq!(v["extraFormats"], serde_json::json!(extra));
    }

    #[test]
    fn v2_and_v1_documents() {
        let v = parse(ApiVersion::V2, 600, 400);
        assert_eq!(v["profile"][0], "http://iiif.io/api/image/2/level2.json");
        assert_eq!(v["profile"][1]["maxArea"], 40_000_000);
        assert_eq!(v["@id"], "http://x/iiif/3/a");
        let v = parse(ApiVersion::V1, 600, 400);
        assert_eq!(v["scale_factors"], serde_json::json!([1, 2]));
        assert_eq!(v["qualities"][2], "grey");
    }

    fn doc(v: ApiVersion, (w, h): (u32, u32), limits: Limits, tile: u32) -> Value {
        let input = InfoInput {
            id: "http://x/iiif/3/a",
            size: ImageSize {
                width: w,
                height: h,
            },
            limits,
            tile,
            extras: &Extras::default(),
            auth: None,
        };
        serde_json::from_str(&info_json(v, &input)).expect("valid JSON")
    }

    /// Spec point: with limits below the tile size, the listed tiles and sizes are still within them
    /// (every tile used to answer 400), and `sizes` is never empty (OpenSeadragon throws on `[]`).
    #[test]
    fn tiles_and_sizes_within_small_limits() {
        let limits = Limits {
            max_width: 300,
            max_height: 10_000,
            max_area: 40_000,
        };
        let v = doc(ApiVersion::V3, (6000, 4000), limits, 512);
        let tile = &v["tiles"][0];
        assert_eq!(
            (tile["width"].as_u64(), tile["height"].as_u64()),
            (Some(200), Some(200))
        );
        let sizes = v["sizes"].as_array().expect("sizes");
        assert!(!sizes.is_empty());
        for s in sizes {
            let (w, h) = (
                s["width"].as_u64().unwrap_or(0),
                s["height"].as_u64().unwrap_or(0),
            );
            assert!(w <= 300 && w * h <= 40_000, "{w}x{h}");
        }
        // A thin image: its 1-pixel level at 1/1024 (the scale at which it is one 100 px tile) is
        // 1x98, what 2.1's `1,` returns; `max` (1x100) is listed after it in 3.0, whose clients
        // ask for `w,h`, and not in 2.1, where `1,` could not return it.
        let limits = Limits {
            max_width: 10_000,
            max_height: 100,
            max_area: 40_000_000,
        };
        let v = doc(ApiVersion::V2, (2, 100_000), limits, 512);
        assert_eq!(v["sizes"], serde_json::json!([{"width": 1, "height": 98}]));
        assert_eq!(v["tiles"][0]["width"], 100);
        let v = doc(ApiVersion::V3, (2, 100_000), limits, 512);
        let listed: Vec<(u64, u64)> = v["sizes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["width"].as_u64().unwrap_or(0),
                            s["height"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(listed, vec![(1, 98), (1, 100)]);
    }

    /// Spec point: a 2.1 `sizes` entry is what its `w,` request returns (17x313 was listed where `17,`
    /// gives 17x331), for every odd size.
    #[test]
    fn v2_sizes_are_what_their_w_comma_requests_return() {
        use crate::iiif::canonical::CanonicalRequest;
        use crate::iiif::parse::parse_image_params;
        for (w, h) in [
            (1057, 19_477),
            (4097, 3001),
            (999, 1001),
            (8001, 5),
            (3, 7777),
        ] {
            let size = ImageSize {
                width: w,
                height: h,
            };
            for (sw, sh) in sizes(size, 256, &Limits::default()) {
                let req = parse_image_params(
                    ApiVersion::V2,
                    "full",
                    &format!("{sw},"),
                    "0",
                    "default.jpg",
                    Format::Jpg,
                )
                .expect("parses");
                let c = CanonicalRequest::resolve_tiled(&req, size, &Limits::default(), Some(256))
                    .expect("serves");
                assert_eq!((c.width(), c.height()), (sw, sh), "{w}x{h}");
            }
        }
    }

    #[test]
    fn sizes_respect_limits() {
        let v = parse(ApiVersion::V3, 20000, 15000);
        // `max` under the 40-megapixel area, as the 3.0 implementation note computes it, is last.
        let last = v["sizes"].as_array().and_then(|a| a.last()).cloned();
        assert_eq!(
            last.map(|s| (s["width"].clone(), s["height"].clone())),
            Some((7302.into(), 5477.into()))
        );
        for s in v["sizes"].as_array().expect("sizes") {
            let (w, h) = (
                s["width"].as_u64().unwrap_or(0),
                s["height"].as_u64().unwrap_or(0),
            );
            assert!(w <= 10_000 && h <= 10_000 && w * h <= 40_000_000, "{w}x{h}");
        }
    }
}
