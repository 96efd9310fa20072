//! Signed, expiring credentials, with no state on the server: the access cookie (the "authorizing
//! aspect" of Auth 2.0, set by the access service and sent by the browser with every image request)
//! and the access token (its stand-in, posted to the viewer and sent only to the probe service).
//!
//! Both carry the visitor's name, the viewer's origin it was issued for, and an expiry, signed with
//! HMAC-SHA256 under the configured secret. The purpose is part of the signed text, so a token can
//! never be replayed as a cookie or the reverse (the spec warns against tokens that reveal the
//! cookie). Pure: the caller passes the time.

use ring::hmac;

/// What a credential says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Credential {
    /// Who signed in, as the fronting proxy named them (empty for kiosk access).
    pub(crate) user: String,
    /// The viewer's origin (`https://viewer.example.org`) it was issued for.
    pub(crate) origin: String,
    /// Unix seconds after which it is no longer valid.
    pub(crate) expires: u64,
}

/// Why a credential was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not in our format.
    Malformed,
    /// The signature does not match: forged, altered, or signed under another secret.
    Forged,
    /// Genuine but past its expiry.
    Expired,
}

#[derive(Clone, Copy)]
enum Purpose {
    Cookie,
    Token,
}

impl Purpose {
    fn tag(self) -> &'static str {
        match self {
            Purpose::Cookie => "iiifd-cookie-v1",
            Purpose::Token => "iiifd-token-v1",
        }
    }
}

/// Signs and checks credentials under one secret.
pub(crate) struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub(crate) fn new(secret: &[u8]) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The value of the access cookie for `c`.
    pub(crate) fn cookie(&self, c: &Credential) -> String {
        self.sign(Purpose::Cookie, c)
    }

    /// An access token for `c`.
    pub(crate) fn token(&self, c: &Credential) -> String {
        self.sign(Purpose::Token, c)
    }

    /// The credential in a cookie value, if genuine and unexpired at `now`.
    pub(crate) fn verify_cookie(&self, value: &str, now: u64) -> Result<Credential, Invalid> {
        self.verify(Purpose::Cookie, value, now)
    }

    /// The credential in an access token, if genuine and unexpired at `now`.
    pub(crate) fn verify_token(&self, value: &str, now: u64) -> Result<Credential, Invalid> {
        self.verify(Purpose::Token, value, now)
    }

    /// `{expires}.{hex origin}.{hex user}.{hex mac}`: only characters a cookie value may hold.
    fn sign(&self, purpose: Purpose, c: &Credential) -> String {
        let body = format!("{}.{}.{}", c.expires, hex(&c.origin), hex(&c.user));
        let mac = hmac::sign(&self.key, signed_text(purpose, &body).as_bytes());
        format!("{body}.{}", hex_bytes(mac.as_ref()))
    }

    fn verify(&self, purpose: Purpose, value: &str, now: u64) -> Result<Credential, Invalid> {
        let (body, mac) = value.rsplit_once('.').ok_or(Invalid::Malformed)?;
        let mac = unhex(mac).ok_or(Invalid::Malformed)?;
        let mut parts = body.split('.');
        let (Some(expires), Some(origin), Some(user), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid::Malformed);
        };
        hmac::verify(&self.key, signed_text(purpose, body).as_bytes(), &mac)
            .map_err(|_| Invalid::Forged)?;
        let expires: u64 = expires.parse().map_err(|_| Invalid::Malformed)?;
        let text = |h: &str| {
            unhex(h)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(Invalid::Malformed)
        };
        let c = Credential {
            user: text(user)?,
            origin: text(origin)?,
            expires,
        };
        if now >= c.expires {
            return Err(Invalid::Expired);
        }
        Ok(c)
    }
}

fn signed_text(purpose: Purpose, body: &str) -> String {
    format!("{}\n{body}", purpose.tag())
}

fn hex(s: &str) -> String {
    hex_bytes(s.as_bytes())
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alice() -> Credential {
        Credential {
            user: "alice".into(),
            origin: "https://viewer.example.org".into(),
            expires: 1_000,
        }
    }

    #[test]
    fn genuine_credentials_verify_until_they_expire() {
        let s = Signer::new(b"secret");
        let cookie = s.cookie(&alice());
        assert_eq!(s.verify_cookie(&cookie, 999), Ok(alice()));
        assert_eq!(s.verify_cookie(&cookie, 1_000), Err(Invalid::Expired));
        let token = s.token(&alice());
        assert_eq!(s.verify_token(&token, 10), Ok(alice()));
        // A token is not a cookie, nor the reverse, and neither reveals the other.
        assert_ne!(token, cookie);
        assert_eq!(s.verify_cookie(&token, 10), Err(Invalid::Forged));
        assert_eq!(s.verify_token(&cookie, 10), Err(Invalid::Forged));
        // Another secret, or any change, is a forgery.
        assert_eq!(
            Signer::new(b"other").verify_cookie(&cookie, 10),
            Err(Invalid::Forged)
        );
        let later = cookie.replacen("1000.", "9999.", 1);
        assert_eq!(s.verify_cookie(&later, 10), Err(Invalid::Forged));
        for junk in ["", ".", "a.b.c.d", "1.2.3.zz", "1000...", "x.y.z.00"] {
            assert!(s.verify_cookie(junk, 10).is_err(), "{junk}");
        }
        // Only characters a cookie value may carry.
        assert!(cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.'));
    }

    proptest! {
        /// Any credential round-trips, and any one-character change is refused.
        #[test]
        fn round_trip_and_tamper(user in ".{0,20}", origin in ".{0,30}", expires in 1u64..u64::MAX,
                                 at in 0usize..200, with in "[0-9a-f.]") {
            let s = Signer::new(b"k");
            let c = Credential { user, origin, expires };
            let token = s.token(&c);
            prop_assert_eq!(s.verify_token(&token, 0), Ok(c.clone()));
            let i = at % token.len();
            let mut changed = token.clone();
            changed.replace_range(i..i + 1, &with);
            if changed != token {
                prop_assert!(s.verify_token(&changed, 0).is_err());
            }
        }
    }
}
