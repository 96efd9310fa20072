//! `/viewer/{identifier}`: a one-page OpenSeadragon viewer over the image's info.json (`?version=2` for
//! the 2.1 service), so a newcomer sees an image at once and the browser test has a real viewer to
//! drive. The OpenSeadragon script URL is configurable (`viewer.script_url`).

use crate::iiif::parse::encode_identifier;
use crate::iiif::ApiVersion;

/// The viewer page. Everything interpolated is either configuration validated at start-up or the
/// percent-encoded identifier (unreserved characters and `%XX` only), so nothing needs HTML escaping.
pub fn page(prefix: &str, script_url: &str, version: ApiVersion, identifier: &str) -> String {
    let info = format!(
        "{prefix}/{}/{}/info.json",
        version.path_segment(),
        encode_identifier(identifier)
    );
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>iiifd viewer</title>
<style>html,body{{margin:0;height:100%;background:#222}}#osd{{width:100%;height:100%}}</style>
</head>
<body>
<div id="osd"></div>
<script src="{script_url}"></script>
<script>
window.tileFailures = [];
window.tilesLoaded = 0;
window.viewer = OpenSeadragon({{
  id: "osd",
  tileSources: "{info}",
  drawer: "canvas",
  showNavigationControl: false,
  crossOriginPolicy: "Anonymous"
}});
viewer.addHandler("tile-load-failed", function (e) {{ window.tileFailures.push(String(e.message)); }});
viewer.addHandler("tile-loaded", function () {{ window.tilesLoaded += 1; }});
</script>
</body>
</html>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_points_at_info_json() {
        let p = page(
            "/iiif",
            "https://cdn.example/osd.js",
            ApiVersion::V2,
            "a/b c",
        );
        assert!(p.contains(r#"tileSources: "/iiif/2/a%2Fb%20c/info.json""#));
        assert!(p.contains(r#"<script src="https://cdn.example/osd.js"></script>"#));
    }
}
