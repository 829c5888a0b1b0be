//! Request and response heads: parsing with `httparse`, salvaging heads the capture cut short,
//! recognising where a message starts, and reading the framing headers.

use std::{borrow::Cow, mem::MaybeUninit};

use super::{
    HeaderField, Http1Limits, HttpRequest, HttpResponse, KeepHeaders, MAX_HEADER_VALUE_BYTES,
    SPAN_REQUEST_HEADERS, convention_method,
};
use crate::span::context::PROPAGATION_HEADERS;

/// Why a head could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed head: {0}")]
    Malformed(httparse::Error),
    #[error("head longer than the configured limit")]
    TooLarge,
}

/// Outcome of one attempt at parsing a head from the start of a buffer.
#[derive(Debug)]
pub enum HeadParse<T> {
    /// The head and how many bytes it took (leading empty lines included).
    Complete(T, usize),
    Partial,
    Invalid(HeadError),
}

/// How a message declares its body length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Neither Content-Length nor Transfer-Encoding.
    Unspecified,
    Length(u64),
    Chunked,
    /// Transfer-Encoding whose last coding is not chunked.
    OtherCoding,
    /// Content-Length that is not a number, or conflicting values.
    Invalid,
}

/// The head kinds a stream can carry.
pub trait Head: Sized {
    fn parse(buf: &[u8], limits: &Http1Limits) -> HeadParse<Self>;
    /// Best-effort head from the bytes before the capture cut it: the complete lines seen.
    fn salvage(buf: &[u8], limits: &Http1Limits) -> Option<Self>;
    /// Whether bytes at the start of a chunk look like the start of such a message.
    fn looks_like_start(bytes: &[u8]) -> bool;
}

#[derive(Debug)]
pub struct RequestHead {
    pub request: HttpRequest,
    pub framing: Framing,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub response: HttpResponse,
    pub framing: Framing,
}

impl Head for RequestHead {
    fn parse(buf: &[u8], limits: &Http1Limits) -> HeadParse<Self> {
        parse_request(buf, limits)
    }

    fn salvage(buf: &[u8], limits: &Http1Limits) -> Option<Self> {
        if let Some(cut) = terminate_at_last_line(buf)
            && let HeadParse::Complete(mut head, _) = parse_request(&cut, limits)
        {
            head.request.head_truncated = true;
            return Some(head);
        }
        salvage_request_line(buf)
    }

    fn looks_like_start(bytes: &[u8]) -> bool {
        looks_like_request_start(bytes)
    }
}

impl Head for ResponseHead {
    fn parse(buf: &[u8], limits: &Http1Limits) -> HeadParse<Self> {
        parse_response(buf, limits)
    }

    fn salvage(buf: &[u8], limits: &Http1Limits) -> Option<Self> {
        let cut = terminate_at_last_line(buf)?;
        match parse_response(&cut, limits) {
            HeadParse::Complete(mut head, _) => {
                head.response.head_truncated = true;
                Some(head)
            }
            _ => None,
        }
    }

    fn looks_like_start(bytes: &[u8]) -> bool {
        looks_like_response_start(bytes)
    }
}

/// Lenient on purpose: loupe observes traffic the peers already accepted, so a header line a
/// strict parser would refuse should not cost the whole message.
fn config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .ignore_invalid_headers_in_responses(true)
        .ignore_invalid_headers_in_requests(true);
    config
}

/// Header slots for a retry after `TooManyHeaders`: enough for any head within the byte
/// limit, since a header line takes at least three bytes (`a:\n`).
fn retry_slots(buf: &[u8], limits: &Http1Limits) -> usize {
    buf.len().min(limits.max_header_bytes) / 3 + 1
}

/// Header slots for a first attempt: the configured count, but never more than the head
/// could hold, so a huge configured value cannot turn into a huge allocation.
fn first_slots(buf: &[u8], limits: &Http1Limits) -> usize {
    limits.max_headers.min(retry_slots(buf, limits)).max(1)
}

/// Header slots on the stack: enough for ordinary heads, so parsing them allocates nothing.
/// Left uninitialised: httparse fills the slots it uses, and writing 64 empty headers
/// before every parse cost more than a short head's parse itself.
const STACK_HEADER_SLOTS: usize = 64;

type Slot<'b> = MaybeUninit<httparse::Header<'b>>;

fn header_slots<'s, 'b>(
    stack: &'s mut [Slot<'b>; STACK_HEADER_SLOTS],
    heap: &'s mut Vec<Slot<'b>>,
    slots: usize,
) -> &'s mut [Slot<'b>] {
    if slots <= STACK_HEADER_SLOTS {
        &mut stack[..slots]
    } else {
        heap.clear();
        heap.resize_with(slots, MaybeUninit::uninit);
        heap
    }
}

fn parse_request(buf: &[u8], limits: &Http1Limits) -> HeadParse<RequestHead> {
    let mut slots = first_slots(buf, limits);
    let mut stack = [const { MaybeUninit::uninit() }; STACK_HEADER_SLOTS];
    let mut heap = Vec::new();
    loop {
        let headers = header_slots(&mut stack, &mut heap, slots);
        let mut req = httparse::Request::new(&mut []);
        match config().parse_request_with_uninit_headers(&mut req, buf, headers) {
            Ok(httparse::Status::Complete(len)) => {
                if len > limits.max_header_bytes {
                    return HeadParse::Invalid(HeadError::TooLarge);
                }
                let head = RequestHead {
                    framing: framing_of(req.headers),
                    request: HttpRequest {
                        method: method_text(req.method.unwrap_or_default()),
                        target: req.path.unwrap_or_default().into(),
                        minor_version: req.version.unwrap_or(1),
                        headers: convert_headers(req.headers, limits, keep_request_header),
                        body_len: 0,
                        head_truncated: false,
                    },
                };
                return HeadParse::Complete(head, len);
            }
            Ok(httparse::Status::Partial) => return HeadParse::Partial,
            Err(httparse::Error::TooManyHeaders) if slots < retry_slots(buf, limits) => {
                slots = retry_slots(buf, limits);
            }
            Err(e) => return HeadParse::Invalid(HeadError::Malformed(e)),
        }
    }
}

fn parse_response(buf: &[u8], limits: &Http1Limits) -> HeadParse<ResponseHead> {
    let mut slots = first_slots(buf, limits);
    let mut stack = [const { MaybeUninit::uninit() }; STACK_HEADER_SLOTS];
    let mut heap = Vec::new();
    loop {
        let headers = header_slots(&mut stack, &mut heap, slots);
        let mut resp = httparse::Response::new(&mut []);
        match config().parse_response_with_uninit_headers(&mut resp, buf, headers) {
            Ok(httparse::Status::Complete(len)) => {
                if len > limits.max_header_bytes {
                    return HeadParse::Invalid(HeadError::TooLarge);
                }
                let head = ResponseHead {
                    framing: framing_of(resp.headers),
                    response: HttpResponse {
                        status: resp.code.unwrap_or_default(),
                        minor_version: resp.version.unwrap_or(1),
                        headers: convert_headers(resp.headers, limits, |_| None),
                        body_len: 0,
                        head_truncated: false,
                    },
                };
                return HeadParse::Complete(head, len);
            }
            Ok(httparse::Status::Partial) => return HeadParse::Partial,
            Err(httparse::Error::TooManyHeaders) if slots < retry_slots(buf, limits) => {
                slots = retry_slots(buf, limits);
            }
            Err(e) => return HeadParse::Invalid(HeadError::Malformed(e)),
        }
    }
}

/// The method, borrowed when it is one the conventions name.
fn method_text(method: &str) -> Cow<'static, str> {
    convention_method(method).map_or_else(|| Cow::Owned(method.to_owned()), Cow::Borrowed)
}

/// The lowercase name of a request header spans or linking use, `None` for the others.
fn keep_request_header(name: &str) -> Option<&'static str> {
    SPAN_REQUEST_HEADERS
        .iter()
        .chain(PROPAGATION_HEADERS)
        .find(|kept| name.eq_ignore_ascii_case(kept))
        .copied()
}

/// The headers `limits.keep_headers` asks for, names in lowercase; with
/// [`KeepHeaders::Used`], those `used` names.
fn convert_headers(
    raw: &[httparse::Header],
    limits: &Http1Limits,
    used: fn(&str) -> Option<&'static str>,
) -> Vec<HeaderField> {
    let all = limits.keep_headers == KeepHeaders::All;
    raw.iter()
        .take(limits.max_headers)
        .filter_map(|h| {
            // A kept name is its lowercase constant: no allocation, where decoding and
            // lowercasing the bytes took two.
            let name = match used(h.name) {
                Some(known) => Cow::Borrowed(known),
                None if all => Cow::Owned(bounded_text(h.name.as_bytes()).to_ascii_lowercase()),
                None => return None,
            };
            Some((name, bounded_text(h.value).into()))
        })
        .collect()
}

/// The bytes as text, lossy where they are not UTF-8, cut to at most
/// [`MAX_HEADER_VALUE_BYTES`] at a character boundary; borrowed when they were valid.
fn bounded_text(bytes: &[u8]) -> Cow<'_, str> {
    // ASCII, nearly every value, is checked a word at a time; the UTF-8 validator costs
    // several times that on a short value, and the lossy decoder more again.
    let mut text = if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        String::from_utf8_lossy(bytes)
    };
    if text.len() > MAX_HEADER_VALUE_BYTES {
        let mut cut = MAX_HEADER_VALUE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        match &mut text {
            Cow::Borrowed(valid) => *valid = &valid[..cut],
            Cow::Owned(lossy) => lossy.truncate(cut),
        }
    }
    text
}

/// Reads the body framing from all headers, not only the kept ones: a Content-Length past
/// `max_headers` still decides where the next message starts.
fn framing_of(headers: &[httparse::Header]) -> Framing {
    let mut last_coding: Option<&[u8]> = None;
    let mut saw_te = false;
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in h.value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if !coding.is_empty() {
                    saw_te = true;
                    last_coding = Some(coding);
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // "5, 5" and repeated identical headers are allowed; anything else is not.
            for part in h.value.split(|&b| b == b',') {
                match parse_decimal(part.trim_ascii()) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => bad_length = true,
                }
            }
        }
    }
    if saw_te {
        return match last_coding {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::OtherCoding,
        };
    }
    match (length, bad_length) {
        (_, true) => Framing::Invalid,
        (Some(n), false) => Framing::Length(n),
        (None, false) => Framing::Unspecified,
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// The bytes up to the last complete line, followed by an empty line so they parse as a whole
/// head. `None` when not even the start line is complete.
fn terminate_at_last_line(buf: &[u8]) -> Option<Vec<u8>> {
    let start = skip_empty_lines(buf);
    let last_lf = buf[start..].iter().rposition(|&b| b == b'\n')? + start;
    let mut cut = Vec::with_capacity(last_lf + 3);
    cut.extend_from_slice(&buf[..=last_lf]);
    cut.extend_from_slice(b"\r\n");
    Some(cut)
}

/// A request whose start line itself was cut: method and as much of the target as was seen.
fn salvage_request_line(buf: &[u8]) -> Option<RequestHead> {
    let line = &buf[skip_empty_lines(buf)..];
    let line = line.split(|&b| b == b'\r' || b == b'\n').next()?;
    let sp = line.iter().position(|&b| b == b' ')?;
    let (method, rest) = (&line[..sp], &line[sp + 1..]);
    if !is_method(method) {
        return None;
    }
    let rest = rest.trim_ascii_start();
    let target = rest.split(|&b| b == b' ').next().unwrap_or_default();
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic() || b >= 0x80) {
        return None;
    }
    let minor_version = match rest.get(target.len()..).map(<[u8]>::trim_ascii) {
        Some(b"HTTP/1.0") => 0,
        _ => 1,
    };
    Some(RequestHead {
        request: HttpRequest {
            method: method_text(&String::from_utf8_lossy(method)),
            target: String::from_utf8_lossy(target).into(),
            minor_version,
            headers: Vec::new(),
            body_len: 0,
            head_truncated: true,
        },
        framing: Framing::Unspecified,
    })
}

fn skip_empty_lines(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len())
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_method(method: &[u8]) -> bool {
    !method.is_empty() && method.len() <= 32 && method.iter().all(|&b| is_tchar(b))
}

/// Methods recognised even when the start line is not complete in the bytes at hand.
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"PURGE",
    b"REPORT",
    b"SEARCH",
];

/// A request line: `METHOD SP target SP HTTP/1.x` up to the line end; when the line end is not
/// in `bytes` (a long target), a well-known method followed by a plausible target.
pub fn looks_like_request_start(bytes: &[u8]) -> bool {
    let bytes = &bytes[skip_empty_lines(bytes)..];
    let Some(sp) = bytes.iter().take(33).position(|&b| b == b' ') else {
        return false;
    };
    let method = &bytes[..sp];
    // Methods are case-sensitive and in practice upper case; insisting on it keeps prose and
    // other protocols' commands from passing as requests.
    if !is_method(method) || !method.iter().all(|b| b.is_ascii_uppercase() || *b == b'-') {
        return false;
    }
    let rest = &bytes[sp + 1..];
    let Some(&first) = rest.first() else {
        return false;
    };
    if !(first == b'/' || first == b'*' || first.is_ascii_alphanumeric()) {
        return false;
    }
    match rest.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
            let Some(target_end) = line.iter().position(|&b| b == b' ') else {
                return false;
            };
            let target = &line[..target_end];
            let version = line[target_end..].trim_ascii_start();
            target.iter().all(|&b| b.is_ascii_graphic() || b >= 0x80)
                && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
        }
        None => {
            KNOWN_METHODS.contains(&method)
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\r' || b >= 0x80)
        }
    }
}

/// Bytes [`could_begin_message`] accepts, past any empty lines.
pub const MAX_BEGINNING: usize = 16;

/// Whether `bytes`, which the two checks above turned down, may be the first piece of a
/// request or status line that its sender wrote in several syscalls (`GE`, `GET `,
/// `HTTP/1.`, `HTTP/1.1 20`). True only for such short, line-less beginnings.
pub fn could_begin_message(bytes: &[u8]) -> bool {
    let bytes = &bytes[skip_empty_lines(bytes)..];
    // The longest such beginning is a method and its space (`M-SEARCH `) or `HTTP/1.1 20`;
    // the bound keeps held pieces from growing however the sender splits its writes.
    if bytes.is_empty() || bytes.len() > MAX_BEGINNING || bytes.contains(&b'\n') {
        return false;
    }
    for status in [&b"HTTP/1.1 "[..], &b"HTTP/1.0 "[..]] {
        if status.starts_with(bytes) {
            return true;
        }
        if let Some(code) = bytes.strip_prefix(status) {
            return code.len() < 3 && code.iter().all(u8::is_ascii_digit);
        }
    }
    match bytes.iter().position(|&b| b == b' ') {
        None => KNOWN_METHODS.iter().any(|m| m.starts_with(bytes)),
        Some(sp) => KNOWN_METHODS.contains(&&bytes[..sp]) && &bytes[sp..] == b" ",
    }
}

/// A status line: `HTTP/1.x SP ddd` followed by a space or the line end.
pub fn looks_like_response_start(bytes: &[u8]) -> bool {
    let bytes = &bytes[skip_empty_lines(bytes)..];
    let Some(rest) = bytes
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| bytes.strip_prefix(b"HTTP/1.0 "))
    else {
        return false;
    };
    let rest = rest.trim_ascii_start();
    match rest {
        [a, b, c, tail @ ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            matches!(tail.first(), None | Some(b' ' | b'\r' | b'\n'))
        }
        _ => false,
    }
}
