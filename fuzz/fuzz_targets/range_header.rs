//! `ferry_server::fuzzing::parse_range`: the `Range:` header of a boot artifact request
//! (kernel, initramfs, image) on the provisioning listener, which anyone on the
//! provisioning network can send. The server turns a `Partial(start, end)` into a seek
//! and a `Content-Length` of `end - start + 1`, so those must fit the file.
//!
//! Input: 8 bytes of file length (little endian; its low two bits pick 0, 1, `u64::MAX`
//! or the value itself, so the edges come up often), then the header value. Checked
//! against an independent reading of RFC 9110's single byte range (`bytes=a-b`, `a-`,
//! `-n`; digits only, whitespace around numbers tolerated; anything else, several
//! ranges or numbers beyond u64 mean "serve the whole file").
#![no_main]

use ferry_server::fuzzing::{parse_range, RangeRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, value)) = data.split_first_chunk::<8>() else { return };
    let raw = u64::from_le_bytes(*len);
    let len = match raw & 3 {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        _ => raw >> 2,
    };
    // The server reads the header with `HeaderValue::to_str`: visible ASCII (and tabs,
    // spaces) only; a value that is not arrives as None.
    let value = value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten();
    let got = parse_range(value, len);
    if let RangeRequest::Partial(start, end) = got {
        assert!(start <= end && end < len, "{value:?} on {len} bytes gave {got:?}");
    }
    assert_eq!(got, model(value, len), "{value:?} on {len} bytes");
});

/// RFC 9110 section 14.1.2, as ferry serves it.
fn model(value: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else { return RangeRequest::Full };
    let parts: Vec<&str> = spec.split('-').collect();
    if spec.contains(',') || parts.len() != 2 {
        return RangeRequest::Full;
    }
    let number = |s: &str| -> Result<Option<u64>, ()> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        s.parse::<u64>().map(Some).map_err(|_| ())
    };
    let (Ok(first), Ok(last)) = (number(parts[0]), number(parts[1])) else { return RangeRequest::Full };
    match (first, last) {
        (None, None) => RangeRequest::Full,
        // The last n bytes.
        (None, Some(n)) if n == 0 || len == 0 => RangeRequest::Unsatisfiable,
        (None, Some(n)) => RangeRequest::Partial(len - n.min(len), len - 1),
        (Some(a), Some(b)) if a > b => RangeRequest::Full,
        (Some(a), _) if a >= len => RangeRequest::Unsatisfiable,
        (Some(a), None) => RangeRequest::Partial(a, len - 1),
        (Some(a), Some(b)) => RangeRequest::Partial(a, b.min(len - 1)),
    }
}
