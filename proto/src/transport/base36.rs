//! Lowercase base36 of big-endian unsigned integers, zero-padded: the alphabet and padding of
//! Go's `big.Int.Text(36)` under `%0*s`, which swarmkit uses for ids and join tokens.

use rand::RngCore;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// `bytes` (a big-endian unsigned integer) in base36, left-padded with `0` to `width`.
/// Longer results are not truncated.
pub(crate) fn encode(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    // Schoolbook long division by 36; inputs are at most 32 bytes, so quadratic is fine.
    while num.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = u8::try_from(acc / 36).expect("quotient of a 14-bit value by 36 fits a byte");
            rem = acc % 36;
        }
        digits.push(ALPHABET[rem as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).expect("the base36 alphabet is ASCII")
}

/// 128 random bits in base36, padded to `width`.
pub(crate) fn random_128(width: usize) -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    encode(&bytes, width)
}

/// Whether every character of `s` is in the base36 alphabet.
pub(crate) fn is_base36(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_go_big_int_text_36() {
        // Expected values computed with Python's int(…, 16) in base 36.
        assert_eq!(encode(&[0x01, 0x02, 0x03, 0x04, 0x05], 0), "1zl7h8l");
        assert_eq!(
            encode(&[0xff; 32], 50),
            "6dp5qcb22im238nr3wvp0ic7q99w035jmy2iw7i6n43d37jtof"
        );
        assert_eq!(encode(&[0, 0, 35], 3), "00z");
        assert_eq!(encode(&[0; 4], 5), "00000");
        assert_eq!(encode(&[], 0), "");
    }

    #[test]
    fn random_values_have_the_width_and_alphabet() {
        let s = random_128(25);
        assert_eq!(s.len(), 25);
        assert!(is_base36(&s));
        assert!(!is_base36("abcD"));
        assert!(!is_base36("ab-c"));
    }
}
