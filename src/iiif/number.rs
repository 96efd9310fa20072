//! Numbers as the Image API writes them (3.0 §4.7): pixel values are non-negative integers; percentages
//! and rotations are non-negative floats written with digits and at most one `.`, never with a sign, an
//! exponent, `inf` or `nan`. Parsing is strict so that `1e308`, `-1`, `+5` and `0x10` are syntax errors,
//! and bounded so that no input can make a number that overflows later arithmetic.

/// Longest accepted number literal. Ten digits hold every `u32`; floats get a little more room for
/// fractional digits. Anything longer is a 400, not an overflow.
const MAX_LITERAL: usize = 24;

/// Why a number literal was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberError {
    /// Not digits (and one `.` for floats), or empty.
    Syntax,
    /// Syntactically fine but larger than iiifd accepts.
    TooLarge,
}

/// Parse a pixel value: ASCII digits only, at most `u32::MAX`.
pub fn parse_u32(s: &str) -> Result<u32, NumberError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::Syntax);
    }
    if s.len() > MAX_LITERAL {
        return Err(NumberError::TooLarge);
    }
    s.parse::<u32>().map_err(|_| NumberError::TooLarge)
}

/// Parse a percentage or rotation: digits with at most one `.`, at least one digit, at most `max`.
/// A leading 0 (`0.5`) is what the spec asks clients to send, but `.5` and `5.` are accepted: they are
/// unambiguous, and being strict about a SHOULD would only break clients.
pub fn parse_decimal(s: &str, max: f64) -> Result<f64, NumberError> {
    let digits = s.bytes().filter(|b| b.is_ascii_digit()).count();
    let dots = s.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != s.len() {
        return Err(NumberError::Syntax);
    }
    if s.len() > MAX_LITERAL {
        return Err(NumberError::TooLarge);
    }
    let v: f64 = s.parse().map_err(|_| NumberError::Syntax)?;
    if !v.is_finite() || v > max {
        return Err(NumberError::TooLarge);
    }
    Ok(v)
}

/// Write a float the canonical way (3.0 §4.7): an integer when it is one, otherwise the shortest decimal
/// that reads back as the same value, with a leading `0` and no trailing zeros. Rust's `Display` for
/// `f64` already never uses an exponent and prints the shortest round-tripping digits.
pub fn format_decimal(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_u32("0"), Ok(0));
        assert_eq!(parse_u32("4294967295"), Ok(u32::MAX));
        assert_eq!(parse_u32("4294967296"), Err(NumberError::TooLarge));
        assert_eq!(
            parse_u32("99999999999999999999999999"),
            Err(NumberError::TooLarge)
        );
        for bad in ["", "-1", "+1", "1.0", "1e3", " 1", "0x10", "１"] {
            assert_eq!(parse_u32(bad), Err(NumberError::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn decimals_are_strict() {
        assert_eq!(parse_decimal("12.5", 360.0), Ok(12.5));
        assert_eq!(parse_decimal(".5", 100.0), Ok(0.5));
        assert_eq!(parse_decimal("5.", 100.0), Ok(5.0));
        assert_eq!(parse_decimal("360.1", 360.0), Err(NumberError::TooLarge));
        for bad in [
            "", ".", "1e308", "-1", "+1", "1..2", "1.2.3", "inf", "NaN", "1,5",
        ] {
            assert_eq!(parse_decimal(bad, 1e9), Err(NumberError::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn canonical_decimals() {
        assert_eq!(format_decimal(90.0), "90");
        assert_eq!(format_decimal(22.5), "22.5");
        assert_eq!(format_decimal(0.5), "0.5");
        assert_eq!(format_decimal(0.0000001), "0.0000001");
        assert_eq!(
            format_decimal(parse_decimal("010.50", 360.0).unwrap_or(0.0)),
            "10.5"
        );
    }
}
