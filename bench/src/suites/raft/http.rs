//! A std-only HTTP/1.1 keep-alive client for etcd's v3 JSON gateway, and the base64 the
//! gateway wants for byte fields.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One HTTP/1.1 keep-alive connection to an etcd member.
pub(super) struct HttpConn {
    pub(super) stream: TcpStream,
    pub(super) host: String,
    pub(super) buf: Vec<u8>,
}

impl HttpConn {
    /// Connects to `target` from network namespace `netns` (the socket stays there).
    pub(super) fn open(
        netns: &str,
        target: SocketAddr,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<HttpConn> {
        let stream = lab::in_netns(netns, move || {
            TcpStream::connect_timeout(&target, connect_timeout)
        })
        .with_context(|| format!("entering {netns}"))?
        .with_context(|| format!("connecting to {target} from {netns}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(io_timeout))?;
        stream.set_write_timeout(Some(io_timeout))?;
        Ok(HttpConn {
            stream,
            host: target.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs a JSON `body` to `path` and reads the whole answer.
    pub(super) fn post(&mut self, path: &str, body: &str) -> Result<Answer> {
        let request = post_request(&self.host, path, body);
        self.stream
            .write_all(request.as_bytes())
            .with_context(|| format!("sending POST {path} to {}", self.host))?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((answer, used)) =
                parse_answer(&self.buf).with_context(|| format!("answer from {}", self.host))?
            {
                self.buf.drain(..used);
                return Ok(answer);
            }
            let n = self
                .stream
                .read(&mut chunk)
                .with_context(|| format!("reading the answer to POST {path} from {}", self.host))?;
            if n == 0 {
                bail!(
                    "{} closed the connection before answering POST {path}",
                    self.host
                );
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// An HTTP answer: status and body.
#[derive(Debug, PartialEq)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

impl Answer {
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

pub(super) fn post_request(host: &str, path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The first complete HTTP/1.1 answer in `buf` and how many bytes it took, or None while it is
/// incomplete. Handles Content-Length and chunked bodies.
pub(super) fn parse_answer(buf: &[u8]) -> Result<Option<(Answer, usize)>> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("HTTP head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let status = match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .with_context(|| format!("status line {status_line:?}"))?,
        _ => bail!("not an HTTP/1.x status line: {status_line:?}"),
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("malformed header line {line:?}");
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = Some(
                value
                    .parse::<usize>()
                    .with_context(|| format!("Content-Length {value:?}"))?,
            );
        } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let body_start = head_end + 4;
    if chunked {
        let mut body = Vec::new();
        let mut at = body_start;
        loop {
            let Some(line_end) = find(&buf[at..], b"\r\n") else {
                return Ok(None);
            };
            let size_text =
                std::str::from_utf8(&buf[at..at + line_end]).context("chunk size is not UTF-8")?;
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .with_context(|| format!("chunk size {size_text:?}"))?;
            at += line_end + 2;
            if size == 0 {
                // Trailers, if any, end with an empty line.
                let rest = &buf[at..];
                let end = if rest.starts_with(b"\r\n") {
                    2
                } else if let Some(e) = find(rest, b"\r\n\r\n") {
                    e + 4
                } else {
                    return Ok(None);
                };
                return Ok(Some((Answer { status, body }, at + end)));
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    let length = length.unwrap_or(0);
    if buf.len() < body_start + length {
        return Ok(None);
    }
    let body = buf[body_start..body_start + length].to_vec();
    Ok(Some((Answer { status, body }, body_start + length)))
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn put_body(key: &[u8], value: &[u8]) -> String {
    format!(r#"{{"key":"{}","value":"{}"}}"#, base64(key), base64(value))
}

/// Standard base64 with padding (RFC 4648), what the gateway wants for bytes fields.
pub(super) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let bytes = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn answers_with_length_chunks_or_still_incomplete() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1";
        let (answer, used) = parse_answer(text).unwrap().unwrap();
        assert_eq!(
            (answer.status, answer.body.as_slice(), used),
            (200, &b"{}"[..], text.len() - 8)
        );
        assert_eq!(parse_answer(&text[..text.len() - 10]).unwrap(), None);
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(),
            None
        );

        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
        let (answer, used) = parse_answer(chunked).unwrap().unwrap();
        assert_eq!(
            (answer.status, answer.text(), used),
            (503, r#"{"a":1}"#.into(), chunked.len())
        );
        for cut in [chunked.len() - 1, chunked.len() - 5, 70] {
            assert_eq!(parse_answer(&chunked[..cut]).unwrap(), None, "cut at {cut}");
        }

        let no_body = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_answer(no_body).unwrap().unwrap().1, no_body.len());
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn requests_carry_length_and_host() {
        assert_eq!(
            post_request("198.18.0.1:2379", "/v3/kv/put", "{}"),
            "POST /v3/kv/put HTTP/1.1\r\nHost: 198.18.0.1:2379\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        assert_eq!(put_body(b"k", b"v"), r#"{"key":"aw==","value":"dg=="}"#);
    }
}
