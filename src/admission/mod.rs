//! Admission: who renders first when renders must wait, so a viewer keeps its tiles while
//! harvesters crawl. Only the image server knows what a request costs (a stored hit is
//! microseconds, a cold full-size render of a big source is seconds), so it is decided here, after
//! the store has been asked: hits never wait for anything below.
//!
//! The model, in the order a render meets it:
//!
//! 1. **Who asks** ([`Admission::identify`]): the client is its address (the peer's, or the one the
//!    fronting proxy names in `admission.client_header`), cut to a network prefix (/24, /64) so
//!    that one harvester with many addresses is one client, and its class, the first
//!    `[[admission.classes]]` whose networks or User-Agent globs match (else `default`). A class
//!    has a share of the render threads, a per-client cap, and may see images only up to a size
//!    (served degraded, as an access rule's `degraded` policy).
//! 2. **What it costs** ([`lane`]): a render a viewer needs (a tile on the info.json grid, a listed
//!    size, a thumbnail) that decodes and writes few pixels is *cheap*; any other region or size,
//!    and anything large, is *heavy*; crawls and tiled copies are *background*.
//! 3. **When it runs** ([`fair`]): per-client queues, served by least recent use within the class
//!    that has used least of its share; a client over its cap, or the longest queue when the
//!    queue is full, gets 429 with `Retry-After` at once. Some render threads are reserved for the
//!    cheap lane and run at the normal CPU priority, the others below it (`crate::render::pool`),
//!    so heavy renders never hold every thread, and use every core when no viewer is waiting.
//!
//! Pure: no I/O, no clock of its own, no HTTP types (the edge hands in header values).

pub(crate) mod fair;

use crate::access::{glob, Degrade};
use crate::config::{mask, AdmissionConfig, Network};
use crate::iiif::canonical::{CanonicalRequest, ImageSize, Rect};
use crate::iiif::info::{scale_factors, sizes};
use crate::iiif::{Format, Limits};
use std::net::{IpAddr, Ipv4Addr};

/// How a render is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// What a viewer needs, cheaply: goes first, and has threads of its own.
    Cheap = 0,
    /// Anything else a visitor asks for.
    Heavy = 1,
    /// Crawls and tiled copies: only on idle threads.
    Background = 2,
}

impl Lane {
    /// Every lane, in index order.
    pub(crate) const ALL: [Lane; 3] = [Lane::Cheap, Lane::Heavy, Lane::Background];

    /// Its name in metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Lane::Cheap => "cheap",
            Lane::Heavy => "heavy",
            Lane::Background => "background",
        }
    }

    /// Its index among the live lanes (background counts as heavy).
    pub(crate) fn live_index(self) -> usize {
        match self {
            Lane::Cheap => 0,
            Lane::Heavy | Lane::Background => 1,
        }
    }
}

/// A client class, by its index (0 is `default`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ClassId(pub(crate) usize);

/// One client: its address cut to its network prefix, and its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ClientKey {
    pub(crate) addr: IpAddr,
    pub(crate) class: ClassId,
}

impl ClientKey {
    /// The server's own work (crawls, warm-ups): never refused by a cap.
    pub(crate) const INTERNAL: ClientKey = ClientKey {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        class: ClassId(0),
    };
}

/// A configured class, ready to match.
#[derive(Clone, Debug)]
pub(crate) struct Class {
    pub(crate) name: String,
    networks: Vec<Network>,
    /// Lower-cased globs.
    user_agents: Vec<String>,
    pub(crate) share: f64,
    pub(crate) cap: usize,
    pub(crate) degrade: Option<Degrade>,
}

/// Which header names the client, and how to read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeaderKind {
    /// One address (`X-Real-IP`, or any header of that shape).
    Single,
    /// A list whose rightmost entry the trusted proxy added (`X-Forwarded-For`).
    List,
    /// RFC 7239: the last element's `for=`.
    Forwarded,
}

/// The admission rules, from `[admission]`.
#[derive(Clone, Debug)]
pub(crate) struct Admission {
    header: Option<(String, HeaderKind)>,
    v4_prefix: u8,
    v6_prefix: u8,
    /// `default` first, then the configured classes in order.
    classes: Vec<Class>,
    cheap_max_pixels: u64,
}

impl Admission {
    /// From the validated configuration.
    pub(crate) fn new(config: &AdmissionConfig) -> Admission {
        let header = match config.client_header.to_ascii_lowercase() {
            h if h.is_empty() => None,
            h => {
                let kind = match h.as_str() {
                    "x-forwarded-for" => HeaderKind::List,
                    "forwarded" => HeaderKind::Forwarded,
                    _ => HeaderKind::Single,
                };
                Some((h, kind))
            }
        };
        let default = Class {
            name: "default".into(),
            networks: Vec::new(),
            user_agents: Vec::new(),
            share: 1.0,
            cap: config.per_client_queue,
            degrade: None,
        };
        let classes = std::iter::once(default)
            .chain(config.classes.iter().map(|c| Class {
                name: c.name.clone(),
                networks: c.networks.clone(),
                user_agents: c.user_agents.iter().map(|u| u.to_lowercase()).collect(),
                share: c.share,
                cap: match c.per_client_queue {
                    0 => config.per_client_queue,
                    n => n,
                },
                degrade: (c.max_width > 0 || c.max_area > 0).then_some(Degrade {
                    max_width: c.max_width,
                    max_area: c.max_area,
                }),
            }))
            .collect();
        Admission {
            header,
            v4_prefix: config.ipv4_prefix,
            v6_prefix: config.ipv6_prefix,
            classes,
            cheap_max_pixels: config.cheap_max_pixels,
        }
    }

    /// The (lower-case) name of the header that names the client, if one is configured.
    pub(crate) fn client_header(&self) -> Option<&str> {
        self.header.as_ref().map(|(h, _)| h.as_str())
    }

    /// The classes, `default` first.
    pub(crate) fn classes(&self) -> &[Class] {
        &self.classes
    }

    /// Whether some class sees images degraded (then who asks matters even for stored answers).
    pub(crate) fn degrades(&self) -> bool {
        self.classes.iter().any(|c| c.degrade.is_some())
    }

    /// The client of a request: `peer` is the connection's address (none in in-process calls),
    /// `named` every value of the configured client header, `user_agent` the User-Agent. A header
    /// that is missing or does not parse leaves the peer address.
    pub(crate) fn identify<'a>(
        &self,
        peer: Option<IpAddr>,
        named: impl Iterator<Item = &'a str>,
        user_agent: Option<&str>,
    ) -> ClientKey {
        let from_header = self.header.as_ref().and_then(|(_, kind)| {
            // Repeated headers are one list, in order (RFC 9110 §5.3): the last value is the
            // proxy's own.
            let last = named.last()?;
            match kind {
                // One address, but a proxy chain may have made it a list: its last entry.
                HeaderKind::Single => last.rsplit(',').next().and_then(parse_ip),
                HeaderKind::List => last.rsplit(',').next().and_then(parse_ip),
                HeaderKind::Forwarded => forwarded_for(last),
            }
        });
        let ip = from_header
            .or(peer)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            .to_canonical();
        let class = self.class_of(ip, user_agent);
        let len = if ip.is_ipv4() {
            self.v4_prefix
        } else {
            self.v6_prefix
        };
        ClientKey {
            addr: mask(ip, len),
            class,
        }
    }

    /// The first class whose networks contain `ip` or whose globs match `user_agent`.
    fn class_of(&self, ip: IpAddr, user_agent: Option<&str>) -> ClassId {
        if self.classes.len() == 1 {
            return ClassId(0);
        }
        let ua = user_agent.map(str::to_lowercase);
        self.classes
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, c)| {
                c.networks.iter().any(|n| n.contains(ip))
                    || ua
                        .as_deref()
                        .is_some_and(|ua| c.user_agents.iter().any(|g| glob(g, ua)))
            })
            .map_or(ClassId(0), |(i, _)| ClassId(i))
    }

    /// The degraded view a class gets, if any.
    pub(crate) fn degrade(&self, class: ClassId) -> Option<Degrade> {
        self.classes.get(class.0).and_then(|c| c.degrade)
    }

    /// The lane of a render of `req` from a source of `size`, whose info.json advertises `tile`
    /// within `limits`, that decodes about `decode_pixels`.
    pub(crate) fn lane(
        &self,
        req: &CanonicalRequest,
        size: ImageSize,
        tile: u32,
        limits: &Limits,
        decode_pixels: u64,
    ) -> Lane {
        lane(
            req,
            size,
            tile,
            limits,
            decode_pixels,
            self.cheap_max_pixels,
        )
    }
}

/// An address written alone, as a header carries it: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`,
/// with a port or not.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    // `192.0.2.1:4711`
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` of the last element of an RFC 7239 `Forwarded` value.
fn forwarded_for(value: &str) -> Option<IpAddr> {
    let last = value.rsplit(',').next()?;
    last.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then(|| parse_ip(v))?
    })
}

/// The largest output side of a thumbnail: a whole image this small is a viewer's request
/// (Mirador's and the Universal Viewer's thumbnails, an OpenSeadragon navigator).
const THUMBNAIL_MAX: u32 = 1024;

/// The lane of a render (see [`Admission::lane`]): cheap when viewer-shaped and at most
/// `cheap_max` pixels decoded and written, heavy otherwise.
pub(crate) fn lane(
    req: &CanonicalRequest,
    size: ImageSize,
    tile: u32,
    limits: &Limits,
    decode_pixels: u64,
    cheap_max: u64,
) -> Lane {
    let output = u64::from(req.width()) * u64::from(req.height());
    // An AV1 or JPEG 2000 encode costs a tile 60x or 13x a JPEG one (benches/formats.rs): never
    // the reserved threads' kind of work, whoever asks.
    let slow_encoder = matches!(req.format(), Format::Avif | Format::Jp2);
    if !slow_encoder
        && viewer_shaped(req, size, tile, limits)
        && decode_pixels.saturating_add(output) <= cheap_max
    {
        Lane::Cheap
    } else {
        Lane::Heavy
    }
}

/// Whether `req` is what a viewer asks for: a tile of the grid info.json describes (at the size
/// any of OpenSeadragon, Leaflet-IIIF or Mirador computes for it, give or take the pixel their
/// roundings differ by), a size info.json lists, or a thumbnail; turned by quarter turns at most.
pub(crate) fn viewer_shaped(
    req: &CanonicalRequest,
    size: ImageSize,
    tile: u32,
    limits: &Limits,
) -> bool {
    if req.degrees() % 90.0 != 0.0 {
        return false;
    }
    let (ow, oh) = (req.width(), req.height());
    let near = |a: u32, b: u32| a.abs_diff(b) <= 1;
    let r = req.region();
    let whole = r
        == Rect {
            x: 0,
            y: 0,
            w: size.width,
            h: size.height,
        };
    if whole
        && (ow.max(oh) <= THUMBNAIL_MAX
            || sizes(size, tile, limits)
                .iter()
                .any(|&(w, h)| near(w, ow) && near(h, oh)))
    {
        return true;
    }
    let tile = tile.max(1);
    scale_factors(size, tile).into_iter().any(|s| {
        let span = u64::from(tile) * u64::from(s);
        let (x, y) = (u64::from(r.x), u64::from(r.y));
        let (w, h) = (u64::from(size.width), u64::from(size.height));
        x % span == 0
            && y % span == 0
            && u64::from(r.w) == span.min(w - x)
            && u64::from(r.h) == span.min(h - y)
            && near(ow, r.w.div_ceil(s))
            && near(oh, r.h.div_ceil(s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientClass;
    use crate::iiif::parse::parse_image_params;
    use crate::iiif::{ApiVersion, Format};
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::BROADCAST))
    }

    fn admission(header: &str, classes: Vec<ClientClass>) -> Admission {
        Admission::new(&AdmissionConfig {
            client_header: header.into(),
            classes,
            ..AdmissionConfig::default()
        })
    }

    fn class(name: &str, networks: &[&str], agents: &[&str]) -> ClientClass {
        ClientClass {
            name: name.into(),
            networks: networks
                .iter()
                .filter_map(|n| Network::parse(n).ok())
                .collect(),
            user_agents: agents.iter().map(|a| a.to_string()).collect(),
            share: 2.0,
            per_client_queue: 0,
            max_width: 0,
            max_area: 0,
        }
    }

    #[test]
    fn clients_are_named_by_the_proxy_and_grouped_by_prefix() {
        let a = admission("X-Forwarded-For", vec![]);
        let peer = Some(ip("127.0.0.1"));
        // The rightmost address is the one the trusted proxy added; what the client wrote before
        // it is ignored.
        let k = a.identify(peer, ["1.2.3.4, 198.51.100.7"].into_iter(), None);
        assert_eq!(k.addr, ip("198.51.100.0"));
        let k = a.identify(peer, ["1.2.3.4", "198.51.100.9"].into_iter(), None);
        assert_eq!(k.addr, ip("198.51.100.0"), "repeated headers are one list");
        // Two addresses of one /24 are one client; of two /24s, two.
        let b = a.identify(peer, ["198.51.100.250"].into_iter(), None);
        let c = a.identify(peer, ["198.51.101.1"].into_iter(), None);
        assert_eq!(k, b);
        assert_ne!(k, c);
        // IPv6 by /64.
        let v6 = a.identify(peer, ["2001:db8:1:2:3::9"].into_iter(), None);
        assert_eq!(v6.addr, ip("2001:db8:1:2::"));
        // Missing or garbage: the peer.
        assert_eq!(
            a.identify(peer, std::iter::empty(), None).addr,
            ip("127.0.0.0")
        );
        assert_eq!(
            a.identify(peer, ["not an address"].into_iter(), None).addr,
            ip("127.0.0.0")
        );
        // No header configured: the peer, whatever the client sends.
        let plain = admission("", vec![]);
        assert_eq!(
            plain
                .identify(Some(ip("203.0.113.5")), ["9.9.9.9"].into_iter(), None)
                .addr,
            ip("203.0.113.0")
        );
        assert_eq!(
            plain.identify(None, std::iter::empty(), None),
            ClientKey::INTERNAL
        );
    }

    #[test]
    fn header_spellings() {
        let real = admission("X-Real-IP", vec![]);
        assert_eq!(
            real.identify(None, ["192.0.2.9"].into_iter(), None).addr,
            ip("192.0.2.0")
        );
        let fwd = admission("Forwarded", vec![]);
        let k = fwd.identify(
            None,
            ["for=1.1.1.1, for=\"[2001:db8::7]:443\";proto=https"].into_iter(),
            None,
        );
        assert_eq!(k.addr, ip("2001:db8::"));
        let k = fwd.identify(None, ["proto=http;for=192.0.2.60:8080"].into_iter(), None);
        assert_eq!(k.addr, ip("192.0.2.0"));
        assert_eq!(
            real.identify(None, ["10.0.0.1, 192.0.2.77"].into_iter(), None)
                .addr,
            ip("192.0.2.0")
        );
        assert_eq!(parse_ip("[::1]:80"), Some(ip("::1")));
        assert_eq!(parse_ip("unknown"), None);
    }

    #[test]
    fn classes_match_by_network_or_user_agent_first_match_wins() {
        let a = admission(
            "",
            vec![
                class("aggregator", &["192.0.2.0/24"], &[]),
                class("bots", &[], &["*gptbot*", "CCBot/*"]),
            ],
        );
        let k = a.identify(
            Some(ip("192.0.2.44")),
            std::iter::empty(),
            Some("GPTBot/1.2"),
        );
        assert_eq!(a.classes()[k.class.0].name, "aggregator");
        let k = a.identify(
            Some(ip("203.0.113.1")),
            std::iter::empty(),
            Some("Mozilla/5.0 (compatible; GPTBot/1.2)"),
        );
        assert_eq!(a.classes()[k.class.0].name, "bots");
        let k = a.identify(
            Some(ip("203.0.113.1")),
            std::iter::empty(),
            Some("ccbot/2.0"),
        );
        assert_eq!(a.classes()[k.class.0].name, "bots", "case does not matter");
        let k = a.identify(Some(ip("203.0.113.1")), std::iter::empty(), Some("Firefox"));
        assert_eq!(k.class, ClassId(0));
        let k = a.identify(Some(ip("203.0.113.1")), std::iter::empty(), None);
        assert_eq!(k.class, ClassId(0));
    }

    fn req(region: &str, size: &str, w: u32, h: u32, rotation: &str) -> Option<CanonicalRequest> {
        let r = parse_image_params(
            ApiVersion::V3,
            region,
            size,
            rotation,
            "default.jpg",
            Format::Jpg,
        )
        .ok()?;
        CanonicalRequest::resolve(
            &r,
            ImageSize {
                width: w,
                height: h,
            },
            &Limits::default(),
        )
        .ok()
    }

    fn shaped(region: &str, size: &str, rotation: &str) -> bool {
        let (w, h) = (8000, 6000);
        let Some(r) = req(region, size, w, h, rotation) else {
            return false;
        };
        viewer_shaped(
            &r,
            ImageSize {
                width: w,
                height: h,
            },
            256,
            &Limits::default(),
        )
    }

    #[test]
    fn what_viewers_ask_for_is_viewer_shaped() {
        // OpenSeadragon's tiles at scale factors 1, 8 and the right edge (8000 = 31 x 256 + 64).
        assert!(shaped("512,768,256,256", "256,256", "0"));
        assert!(shaped("2048,2048,2048,2048", "256,256", "0"));
        assert!(shaped("7936,0,64,256", "64,256", "0"));
        assert!(shaped("6144,4096,1856,1904", "232,238", "0"));
        // Leaflet's and 2.1's roundings, a pixel apart.
        assert!(shaped("6144,4096,1856,1904", "232,237", "0"));
        // Quarter turns and mirroring (Mirador's rotate buttons).
        assert!(shaped("512,768,256,256", "256,256", "90"));
        assert!(shaped("512,768,256,256", "256,256", "!180"));
        // Listed sizes and thumbnails.
        assert!(shaped("full", "250,188", "0"));
        assert!(shaped("full", "2000,1500", "0"));
        assert!(shaped("full", "!256,256", "0"));
        assert!(shaped("full", ",120", "0"));
        // Anything else is not.
        assert!(!shaped("100,100,300,300", "150,150", "0"));
        assert!(!shaped("512,768,256,256", "200,200", "0"));
        assert!(!shaped("512,768,256,256", "256,256", "45"));
        assert!(!shaped("full", "1990,1492", "0"));
        assert!(!shaped("full", "max", "0"));
        assert!(!shaped("256,0,512,512", "256,256", "0"), "not on the grid");
    }

    #[test]
    fn cheap_needs_the_shape_and_few_pixels() {
        let size = ImageSize {
            width: 8000,
            height: 6000,
        };
        let limits = Limits::default();
        let tile = req("512,768,256,256", "256,256", 8000, 6000, "0");
        let odd = req("100,100,300,300", "150,150", 8000, 6000, "0");
        let (Some(tile), Some(odd)) = (tile, odd) else {
            panic!("valid requests");
        };
        assert_eq!(
            lane(&tile, size, 256, &limits, 65_536, 4 << 20),
            Lane::Cheap
        );
        // The same tile from a flat source not in memory: the whole image is decoded.
        assert_eq!(
            lane(&tile, size, 256, &limits, 48_000_000, 4 << 20),
            Lane::Heavy
        );
        assert_eq!(lane(&odd, size, 256, &limits, 100, 4 << 20), Lane::Heavy);
        // The same tile as avif or jp2: slow encoders are never cheap; jxl (lossless, fast) is.
        for (format, want) in [
            (Format::Avif, Lane::Heavy),
            (Format::Jp2, Lane::Heavy),
            (Format::Jxl, Lane::Cheap),
        ] {
            let r = parse_image_params(
                ApiVersion::V3,
                "512,768,256,256",
                "256,256",
                "0",
                &format!("default.{}", format.extension()),
                format,
            )
            .expect("parses");
            let c = CanonicalRequest::resolve(&r, size, &limits).expect("valid");
            assert_eq!(
                lane(&c, size, 256, &limits, 65_536, 4 << 20),
                want,
                "{format}"
            );
        }
    }

    proptest! {
        /// Every tile of every level of any image, as OpenSeadragon asks it (3.0, `w,h`), is
        /// viewer-shaped.
        #[test]
        fn every_grid_tile_is_viewer_shaped(w in 1u32..20_000, h in 1u32..20_000,
                                            tile in prop::sample::select(vec![256u32, 512, 1024]),
                                            level in 0usize..16, col in 0u32..1000, row in 0u32..1000) {
            let size = ImageSize { width: w, height: h };
            let factors = scale_factors(size, tile);
            let s = factors[level % factors.len()];
            let span = tile * s;
            let (x, y) = (col * w.div_ceil(span) / 1000 * span, row * h.div_ceil(span) / 1000 * span);
            let (rw, rh) = (span.min(w - x), span.min(h - y));
            let region = if (x, y, rw, rh) == (0, 0, w, h) { "full".to_owned() } else { format!("{x},{y},{rw},{rh}") };
            let size_param = format!("{},{}", rw.div_ceil(s), rh.div_ceil(s));
            let Some(r) = req(&region, &size_param, w, h, "0") else { return Ok(()) };
            prop_assert!(viewer_shaped(&r, size, tile, &Limits::default()), "{region}/{size_param}");
        }
    }
}
