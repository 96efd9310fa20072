//! Who may see what, decided before the store is asked (IIIF Authorization Flow 2.0).
//!
//! An identifier's [`Policy`] comes from the configured rules, first match wins, `open` when none
//! matches. A visitor's credential is a signed, expiring cookie set by the access service (the
//! login hook behind the fronting proxy: iiifd keeps no passwords), see [`token`]. The [`Decision`]
//! for one request follows from both, or from the institution's own decision service when one is
//! configured ([`decision`]). Viewers learn it from the probe service; image requests are refused
//! (401) or answered at the degraded size before any lookup, so a stored derivative of a
//! restricted image is never sent without a decision.
//!
//! This module holds the pure parts (rules, globs, decisions, the degraded size); `decision` does
//! the one network call; `http::auth` speaks the protocol.

pub(crate) mod decision;
pub(crate) mod services;
pub(crate) mod token;

use crate::config::{AccessConfig, AccessPolicy};
use crate::iiif::canonical::ImageSize;
use decision::{DecisionService, Unavailable};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use token::{Credential, Invalid, Signer};

/// Access control as configured: the rules, the signer, the decision service and the texts.
#[derive(Debug)]
pub(crate) struct Access {
    rules: Rules,
    signer: Signer,
    decision: Option<DecisionService>,
    config: AccessConfig,
}

impl Access {
    /// From the validated `[access]` section.
    pub(crate) fn new(config: &AccessConfig) -> Result<Access, String> {
        let rules = Rules(
            config
                .rules
                .iter()
                .map(|r| Rule {
                    identifiers: r.identifiers.clone(),
                    policy: match r.policy {
                        AccessPolicy::Open => Policy::Open,
                        AccessPolicy::Restricted => Policy::Restricted,
                        AccessPolicy::Degraded => Policy::Degraded(Degrade {
                            max_width: r.max_width,
                            max_area: r.max_area,
                        }),
                    },
                })
                .collect(),
        );
        let decision = match config.decision_url.as_str() {
            "" => None,
            url => Some(DecisionService::new(
                url,
                Duration::from_millis(config.decision_timeout_ms),
                Duration::from_secs(config.decision_cache_secs),
            )?),
        };
        Ok(Access {
            rules,
            signer: Signer::new(config.secret.0.as_bytes()),
            decision,
            config: config.clone(),
        })
    }

    /// The configuration it was built from (texts, lifetimes, origins).
    pub(crate) fn config(&self) -> &AccessConfig {
        &self.config
    }

    /// The decision service's cache of answers, when one is configured.
    pub(crate) fn cache(&self) -> Option<crate::bounded::CacheReport> {
        self.decision.as_ref().map(DecisionService::report)
    }

    /// The signer of cookies and tokens.
    pub(crate) fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Whether any rule restricts anything: when none does, requests need no check at all (and no
    /// lookup of the file behind an identifier before the usual one).
    pub(crate) fn enabled(&self) -> bool {
        self.rules.0.iter().any(|r| r.policy != Policy::Open)
    }

    /// The policy for a request of `identifier` served by the file `name` (the source's own name
    /// for it, aliases resolved: an identifier without its extension, a symbolic link): the
    /// strictest of the rules for the identifier, the name, and the name without its extension, so
    /// no alias of a restricted file is less restricted than the file.
    pub(crate) fn policy(&self, identifier: &str, name: &str) -> Policy {
        // The name also without its image extension: `chart` and `chart.jpg` are one image.
        let stem = crate::source::identifier_of(name).unwrap_or(name);
        [name, stem]
            .iter()
            .fold(self.rules.policy(identifier), |p, n| {
                stricter(p, self.rules.policy(n))
            })
    }

    /// Whether the request is open to everyone: then no access services are listed, nothing is
    /// checked and responses stay public.
    pub(crate) fn is_open(&self, identifier: &str, name: &str) -> bool {
        self.policy(identifier, name) == Policy::Open
    }

    /// The decision for a visitor holding `credential` (already verified, `None` when anonymous)
    /// about `identifier` (file `name`): open ones are allowed; others are decided by the decision
    /// service when one is configured (which then refines the rules), else by their rule.
    pub(crate) async fn decide(
        &self,
        identifier: &str,
        name: &str,
        credential: Option<&Credential>,
    ) -> Result<Decision, Unavailable> {
        match (&self.decision, self.policy(identifier, name)) {
            (_, Policy::Open) => Ok(Decision::Allow),
            (Some(service), _) => {
                let user = credential.map_or("", |c| c.user.as_str());
                service.decide(identifier, name, user).await
            }
            (None, policy) => Ok(by_policy(policy, credential.is_some())),
        }
    }

    /// The credential in an access cookie value, if genuine and current.
    pub(crate) fn cookie_credential(&self, value: &str) -> Result<Credential, Invalid> {
        self.signer.verify_cookie(value, now())
    }

    /// The credential in an access token, if genuine and current.
    pub(crate) fn token_credential(&self, value: &str) -> Result<Credential, Invalid> {
        self.signer.verify_token(value, now())
    }
}

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the configuration says about an identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Everyone sees everything (the default).
    Open,
    /// Only visitors with a credential (and the decision service's yes, when configured).
    Restricted,
    /// Visitors without a credential see the image at most this large.
    Degraded(Degrade),
}

/// The largest view a degraded visitor gets: the whole image at most `max_width` wide and
/// `max_area` pixels (0: no such bound), and every region at that resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Degrade {
    pub(crate) max_width: u32,
    pub(crate) max_area: u64,
}

impl Degrade {
    /// The size of the whole degraded image for an image of `img`: at most the image, at least
    /// 1x1, keeping its aspect ratio.
    pub(crate) fn size(&self, img: ImageSize) -> (u32, u32) {
        let (w, h) = (u64::from(img.width.max(1)), u64::from(img.height.max(1)));
        // The largest width whose height (rounded like a `w,` request) keeps within both bounds.
        let mut cw = w;
        if self.max_width > 0 {
            cw = cw.min(u64::from(self.max_width));
        }
        if self.max_area > 0 {
            let by_area = ((self.max_area as f64) * (w as f64) / (h as f64)).sqrt() as u64;
            cw = cw.min(by_area.max(1));
        }
        let height = |cw: u64| ((2 * h * cw + w) / (2 * w)).max(1);
        while cw > 1 && self.max_area > 0 && cw * height(cw) > self.max_area {
            cw -= 1;
        }
        let cw = cw.max(1);
        (cw as u32, height(cw) as u32)
    }
}

/// The answer for one visitor and one identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Serve as asked.
    Allow,
    /// Refuse images (401); the probe says 401.
    Deny,
    /// Serve at most the degraded size.
    Degrade(Degrade),
}

/// One configured rule.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rule {
    pub(crate) identifiers: String,
    pub(crate) policy: Policy,
}

/// The rules, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Rules(pub(crate) Vec<Rule>);

impl Rules {
    /// The policy of the first rule whose glob matches `identifier`; `Open` when none does.
    pub(crate) fn policy(&self, identifier: &str) -> Policy {
        self.0
            .iter()
            .find(|r| glob(&r.identifiers, identifier))
            .map_or(Policy::Open, |r| r.policy)
    }
}

/// The stricter of two policies: restricted over degraded over open; of two degraded, the smaller.
pub(crate) fn stricter(a: Policy, b: Policy) -> Policy {
    match (a, b) {
        (Policy::Restricted, _) | (_, Policy::Restricted) => Policy::Restricted,
        (Policy::Degraded(x), Policy::Degraded(y)) => Policy::Degraded(Degrade {
            max_width: smaller_bound(x.max_width, y.max_width),
            max_area: smaller_bound(x.max_area, y.max_area),
        }),
        (Policy::Degraded(d), _) | (_, Policy::Degraded(d)) => Policy::Degraded(d),
        (Policy::Open, Policy::Open) => Policy::Open,
    }
}

/// The smaller of two bounds where 0 means none.
fn smaller_bound<T: Ord + Default + Copy>(a: T, b: T) -> T {
    let none = T::default();
    match (a == none, b == none) {
        (true, _) => b,
        (_, true) => a,
        _ => a.min(b),
    }
}

/// The decision from the policy alone: `signed_in` is whether the visitor holds a valid credential.
pub(crate) fn by_policy(policy: Policy, signed_in: bool) -> Decision {
    match (policy, signed_in) {
        (Policy::Open, _) | (_, true) => Decision::Allow,
        (Policy::Restricted, false) => Decision::Deny,
        (Policy::Degraded(d), false) => Decision::Degrade(d),
    }
}

/// Shell-style match of a whole identifier: `*` is any run of characters (`/` included, since
/// identifiers are opaque), `?` one character, `\` takes the next character literally; anything else
/// matches itself.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative with one backtrack point (the last `*`): linear in practice, never exponential.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => {
                pi += 1;
                ti += 1;
                continue;
            }
            Some('\\') if p.get(pi + 1) == Some(&t[ti]) => {
                pi += 2;
                ti += 1;
                continue;
            }
            Some(&c) if c != '\\' && c == t[ti] => {
                pi += 1;
                ti += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("*", "a/b/c.tif"));
        assert!(glob("private/*", "private/a/b.jpg"));
        assert!(!glob("private/*", "public/private/a.jpg"));
        assert!(glob("*.tif", "a/b.tif"));
        assert!(!glob("*.tif", "a/b.tiff"));
        assert!(glob("scan-??.jpg", "scan-01.jpg"));
        assert!(!glob("scan-??.jpg", "scan-1.jpg"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob(r"what\?.jpg", "what?.jpg"));
        assert!(!glob(r"what\?.jpg", "whatX.jpg"));
        assert!(glob("chart", "chart"));
        assert!(!glob("chart", "chart2"));
    }

    #[test]
    fn first_rule_wins_and_open_is_the_default() {
        let d = Degrade {
            max_width: 400,
            max_area: 0,
        };
        let rules = Rules(vec![
            Rule {
                identifiers: "private/open-*".into(),
                policy: Policy::Open,
            },
            Rule {
                identifiers: "private/*".into(),
                policy: Policy::Restricted,
            },
            Rule {
                identifiers: "*.tif".into(),
                policy: Policy::Degraded(d),
            },
        ]);
        assert_eq!(rules.policy("private/open-1.jpg"), Policy::Open);
        assert_eq!(rules.policy("private/x.tif"), Policy::Restricted);
        assert_eq!(rules.policy("x.tif"), Policy::Degraded(d));
        assert_eq!(rules.policy("x.jpg"), Policy::Open);
        assert_eq!(by_policy(Policy::Restricted, false), Decision::Deny);
        assert_eq!(by_policy(Policy::Restricted, true), Decision::Allow);
        assert_eq!(by_policy(Policy::Degraded(d), false), Decision::Degrade(d));
        assert_eq!(by_policy(Policy::Open, false), Decision::Allow);
        // Aliases: the stricter policy of the identifier and the file's own name.
        let narrow = Degrade {
            max_width: 0,
            max_area: 5_000,
        };
        assert_eq!(
            stricter(Policy::Open, Policy::Restricted),
            Policy::Restricted
        );
        assert_eq!(
            stricter(Policy::Degraded(d), Policy::Open),
            Policy::Degraded(d)
        );
        assert_eq!(
            stricter(Policy::Degraded(d), Policy::Degraded(narrow)),
            Policy::Degraded(Degrade {
                max_width: 400,
                max_area: 5_000
            })
        );
        assert_eq!(stricter(Policy::Open, Policy::Open), Policy::Open);
    }

    #[test]
    fn degraded_sizes() {
        let img = |width, height| ImageSize { width, height };
        let by_width = Degrade {
            max_width: 400,
            max_area: 0,
        };
        assert_eq!(by_width.size(img(8000, 6000)), (400, 300));
        assert_eq!(by_width.size(img(300, 200)), (300, 200));
        let by_area = Degrade {
            max_width: 0,
            max_area: 10_000,
        };
        let (w, h) = by_area.size(img(8000, 6000));
        assert!(u64::from(w) * u64::from(h) <= 10_000 && w >= 110, "{w}x{h}");
    }

    proptest! {
        /// A matching text is found for patterns made from it, and a literal pattern matches only
        /// itself.
        #[test]
        fn glob_agrees_with_construction(text in "[a-c/.]{0,12}", cut in 0usize..13, cut2 in 0usize..13) {
            let chars: Vec<char> = text.chars().collect();
            let (a, b) = (cut.min(chars.len()), cut2.min(chars.len()));
            let (lo, hi) = (a.min(b), a.max(b));
            let prefix: String = chars[..lo].iter().collect();
            let suffix: String = chars[hi..].iter().collect();
            let pattern = format!("{prefix}*{suffix}");
            prop_assert!(glob(&pattern, &text));
            let qs: String = chars.iter().map(|_| '?').collect();
            prop_assert!(glob(&qs, &text));
            prop_assert!(glob(&text, &text));
            let longer = format!("{text}x");
            prop_assert!(!glob(&longer, &text));
        }

        /// The degraded size never exceeds its bounds or the image, and keeps the aspect ratio.
        #[test]
        fn degraded_size_within_bounds(w in 1u32..40_000, h in 1u32..40_000, mw in 0u32..5000, ma in 0u64..4_000_000) {
            let d = Degrade { max_width: mw, max_area: ma };
            let (dw, dh) = d.size(ImageSize { width: w, height: h });
            prop_assert!(dw >= 1 && dh >= 1 && dw <= w);
            if mw > 0 { prop_assert!(dw <= mw.max(1)); }
            if ma > 0 && dw > 1 { prop_assert!(u64::from(dw) * u64::from(dh) <= ma.max(1)); }
            let expected = (2 * u64::from(h) * u64::from(dw) + u64::from(w)) / (2 * u64::from(w));
            prop_assert_eq!(u64::from(dh), expected.max(1));
        }
    }
}
