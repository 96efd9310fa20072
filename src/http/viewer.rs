//! `/viewer/{identifier}`: a one-page OpenSeadragon viewer over the image's info.json (`?version=2` for
//! the 2.1 service), so a newcomer sees an image at once and the browser test has a real viewer to
//! drive. The OpenSeadragon script URL is configurable (`viewer.script_url`).

use crate::iiif::parse::encode_identifier;
use crate::iiif::ApiVersion;

/// The viewer page. Everything interpolated is either configuration validated at start-up or the
/// percent-encoded identifier (unreserved characters and `%XX` only), so nothing needs HTML escaping.
///
/// When the OpenSeadragon script cannot be loaded (a machine without internet access and the default
/// CDN URL, say), the page still shows the image, at most 1600 px a side, and says how to point
/// `viewer.script_url` at a local copy.
pub(crate) fn page(
    prefix: &str,
    script_url: &str,
    version: ApiVersion,
    identifier: &str,
) -> String {
    let service = format!(
        "{prefix}/{}/{}",
        version.path_segment(),
        encode_identifier(identifier)
    );
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>iiifd viewer</title>
<style>html,body{{margin:0;height:100%;background:#222;color:#ddd;font:15px sans-serif}}#osd{{width:100%;height:100%}}
#still{{display:none;height:100%;text-align:center}}#still img{{max-width:100%;max-height:calc(100% - 3em)}}#still p{{margin:.8em}}</style>
</head>
<body>
<div id="osd"></div>
<div id="still">
<img id="still-image" alt="{identifier_text}" data-src="{service}/full/!1600,1600/0/default.jpg">
<p>The OpenSeadragon viewer could not be loaded from {script_url}, so this is a still image. To zoom without internet access, serve a local copy of openseadragon.min.js and set <code>viewer.script_url</code> (env <code>IIIFD_VIEWER__SCRIPT_URL</code>) to its URL.</p>
</div>
<script src="{script_url}"></script>
<script>
window.tileFailures = [];
window.tilesLoaded = 0;
if (typeof OpenSeadragon === "undefined") {{
  var still = document.getElementById("still-image");
  still.src = still.getAttribute("data-src");
  document.getElementById("osd").style.display = "none";
  document.getElementById("still").style.display = "block";
  window.viewerMode = "still";
}} else {{
  window.viewerMode = "openseadragon";
  window.viewer = OpenSeadragon({{
    id: "osd",
    tileSources: "{service}/info.json",
    drawer: "canvas",
    showNavigationControl: false,
    crossOriginPolicy: "Anonymous"
  }});
  viewer.addHandler("tile-load-failed", function (e) {{ window.tileFailures.push(String(e.message)); }});
  viewer.addHandler("tile-loaded", function () {{ window.tilesLoaded += 1; }});
}}
</script>
</body>
</html>
"#,
        identifier_text = encode_identifier(identifier),
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
        // The still image for when the script does not load.
        assert!(p.contains(r#"data-src="/iiif/2/a%2Fb%20c/full/!1600,1600/0/default.jpg""#));
        assert!(p.contains("viewer.script_url"));
    }
}
