//! Streams a content-addressed file with `Content-Length`, `ETag` (its SHA-256),
//! `If-None-Match` and single `Range` requests, never buffering it whole.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// A byte range resolved against the file length: inclusive start and end.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

/// Parses `Range: bytes=a-b | a- | -n`. Multiple ranges and other units get the whole
/// file (which RFC 9110 allows).
pub fn parse_range(value: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else { return RangeRequest::Full };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.split_once('-') else { return RangeRequest::Full };
    let (a, b) = (a.trim(), b.trim());
    // RFC 9110: 1*DIGIT. `u64::from_str` alone would also take a leading '+'.
    let number = |s: &str| s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse::<u64>().ok()).flatten();
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, false) => number(b).map(|n| (len.saturating_sub(n), len.saturating_sub(1), n > 0)),
        (false, true) => number(a).map(|s| (s, len.saturating_sub(1), true)),
        (false, false) => match (number(a), number(b)) {
            (Some(s), Some(e)) if s <= e => Some((s, e.min(len.saturating_sub(1)), true)),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => RangeRequest::Full,
        Some((s, e, nonempty)) if nonempty && len > 0 && s < len && s <= e => RangeRequest::Partial(s, e),
        Some(_) => RangeRequest::Unsatisfiable,
    }
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').map(str::trim).any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
    })
}

pub async fn serve(
    path: &Path,
    sha256: &str,
    headers: &HeaderMap,
    extra: &[(header::HeaderName, &'static str)],
) -> Response {
    let etag = format!("\"{sha256}\"");
    let mut common = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        common.insert(header::ETAG, v);
    }
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    common.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    for (k, v) in extra {
        common.insert(k.clone(), HeaderValue::from_static(v));
    }
    if etag_matches(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "artifact missing from the object store");
            return (StatusCode::NOT_FOUND, "artifact missing; re-import the image\n").into_response();
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    // A Range is honoured only if If-Range (when sent) names this version.
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == etag);
    let range = if if_range_ok {
        parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), len)
    } else {
        RangeRequest::Full
    };
    common.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    let (status, start, count) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial(s, e) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{len}")) {
                common.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, s, e - s + 1)
        }
        RangeRequest::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                common.insert(header::CONTENT_RANGE, v);
            }
            return (StatusCode::RANGE_NOT_SATISFIABLE, common).into_response();
        }
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 * 1024));
    (status, common, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Partial(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Partial(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Partial(90, 99));
        assert_eq!(parse_range(Some("bytes=50-1000"), 100), Partial(50, 99));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=9-0"), 100), Full, "malformed: ignored");
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=x-y"), 100), Full);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
    }

    #[test]
    fn range_numbers_are_digits_only() {
        for signed in ["bytes=+5-9", "bytes=5-+9", "bytes=+90-", "bytes=-+10", "bytes=٣-9"] {
            assert_eq!(parse_range(Some(signed), 100), Full, "{signed}");
        }
        assert_eq!(parse_range(Some("bytes= 5 - 9 "), 100), Partial(5, 9), "whitespace stays tolerated");
    }
}
