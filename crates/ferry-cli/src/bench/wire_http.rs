//! The few bytes of HTTP/1.1 a simulated node speaks inside its tunnel: requests it
//! writes itself and responses parsed with `httparse` (hyper's own parser).

/// A request for `path` on `host`; a body is sent as JSON.
pub fn request(method: &str, host: &str, path: &str, json: Option<&[u8]>) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    if let Some(body) = json {
        head += &format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len());
    }
    head += "\r\n";
    let mut out = head.into_bytes();
    out.extend_from_slice(json.unwrap_or_default());
    out
}

/// The status and body of a complete response at the start of `buf`; `None` while
/// more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<(u16, Vec<u8>)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf).map_err(|_| "malformed response")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.ok_or("malformed response")?;
    let header = |name: &str| {
        response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.to_ascii_lowercase())
    };
    let body = &buf[head_len..];
    if header("transfer-encoding").is_some_and(|v| v.ends_with(b"chunked")) {
        return Ok(dechunk(body)?.map(|b| (status, b)));
    }
    let length = match header("content-length") {
        Some(v) => std::str::from_utf8(&v).ok().and_then(|v| v.trim().parse().ok()).ok_or("bad content-length")?,
        None => 0,
    };
    Ok((body.len() >= length).then(|| (status, body[..length].to_vec())))
}

/// A chunked body, once its last chunk has arrived.
fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size = std::str::from_utf8(&body[..eol]).map_err(|_| "bad chunk")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).map_err(|_| "bad chunk")?;
        let rest = &body[eol + 2..];
        if size == 0 {
            // No trailers from our server: the final CRLF ends the body.
            return Ok(rest.starts_with(b"\r\n").then_some(out));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        body = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_partial_and_chunked_responses() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(r), Ok(Some((200, b"hello".to_vec()))));
        assert_eq!(parse_response(&r[..r.len() - 1]), Ok(None), "body not all there");
        assert_eq!(parse_response(&r[..10]), Ok(None), "head not all there");
        assert_eq!(parse_response(b"HTTP/1.1 204 No Content\r\n\r\n"), Ok(Some((204, vec![]))));
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(c), Ok(Some((200, b"abcde".to_vec()))));
        assert_eq!(parse_response(&c[..c.len() - 2]), Ok(None), "last chunk's CRLF missing");
        assert!(parse_response(b"NOT HTTP\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }

    #[test]
    fn requests() {
        let r = request("POST", "100.64.0.1:8471", "/phone-home", Some(b"{}"));
        assert_eq!(
            r,
            b"POST /phone-home HTTP/1.1\r\nhost: 100.64.0.1:8471\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        let r = request("GET", "h", "/meta-data", None);
        assert_eq!(r, b"GET /meta-data HTTP/1.1\r\nhost: h\r\n\r\n");
    }
}
