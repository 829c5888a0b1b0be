//! The fallback route: the request path with id-like segments replaced by `{id}`.

/// Segments kept before the rest of a path collapses into `/*`.
pub const MAX_SEGMENTS: usize = 16;
/// Longest segment kept verbatim, in bytes; longer ones become `{id}`.
pub const MAX_SEGMENT_LEN: usize = 64;
/// Shortest hex string or mixed token taken for an id.
const MIN_TOKEN_LEN: usize = 16;
/// A segment with this many digits is an id whatever else it holds (`ord_12345`), while
/// names such as `x86_64` or `sha256` stay.
const MIN_DIGITS: usize = 5;

const ID: &str = "{id}";

/// The heuristic route of a request path; see the module docs for the rules.
pub fn heuristic_route(path: &str) -> String {
    let mut out = String::new();
    write_heuristic_route(path, &mut out);
    out
}

/// [`heuristic_route`], appended to `out`.
pub fn write_heuristic_route(path: &str, out: &mut String) {
    let path = strip_to_path(path);
    if path == "*" {
        out.push('*');
        return;
    }
    let start = out.len();
    for (i, seg) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/*");
            break;
        }
        out.push('/');
        out.push_str(if looks_like_id(seg) { ID } else { seg });
    }
    if out.len() == start {
        out.push('/');
    }
}

/// Drops a query or fragment the caller left on, and the scheme and authority of an
/// absolute-form target (`GET http://host/path` sent to a proxy).
pub(super) fn strip_to_path(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let target = &target[..end];
    let lower_prefix = |p: &str| {
        target
            .get(..p.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(p))
    };
    for scheme in ["http://", "https://"] {
        if lower_prefix(scheme) {
            let rest = &target[scheme.len()..];
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

pub(super) fn looks_like_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.len() > MAX_SEGMENT_LEN || is_uuid(b) {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        // Without a digit only a long all-hex string (`deadbeefcafebabe`) is an id.
        return b.len() >= MIN_TOKEN_LEN && b.iter().all(u8::is_ascii_hexdigit);
    }
    digits >= MIN_DIGITS
        || is_numeric(b)
        || (b.len() >= MIN_TOKEN_LEN && b.iter().all(|&c| is_token_char(c)))
}

/// Integers, signed or decimal numbers, and digit groups such as dates (`2024-01-15`),
/// times (`12:30`) and IPv4 addresses. The caller has checked there is a digit.
fn is_numeric(b: &[u8]) -> bool {
    let body = match b {
        [b'+' | b'-', rest @ ..] => rest,
        _ => b,
    };
    body.iter()
        .all(|&c| c.is_ascii_digit() || matches!(c, b'.' | b',' | b'-' | b'_' | b':'))
}

/// 8-4-4-4-12 hex digits, any case.
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Characters of base64, base64url and slug-like ids.
fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'+' | b'=' | b'%')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_root() {
        assert_eq!(heuristic_route(""), "/");
        assert_eq!(heuristic_route("/"), "/");
        assert_eq!(heuristic_route("//"), "/");
        assert_eq!(heuristic_route("?a=1"), "/");
    }

    #[test]
    fn ordinary_words_stay() {
        assert_eq!(heuristic_route("/api/v1/users"), "/api/v1/users");
        assert_eq!(heuristic_route("/v2/auth/2fa"), "/v2/auth/2fa");
        for seg in [
            "oauth2",
            "x86_64",
            "sha256",
            "i18n",
            "k8s",
            "html5",
            "v1.2",
            "index.html",
        ] {
            assert_eq!(
                heuristic_route(&format!("/{seg}")),
                format!("/{seg}"),
                "{seg}"
            );
        }
    }

    #[test]
    fn numeric_segments() {
        assert_eq!(heuristic_route("/users/123"), "/users/{id}");
        assert_eq!(
            heuristic_route("/users/123/orders/0"),
            "/users/{id}/orders/{id}"
        );
        for seg in [
            "-5",
            "+5",
            "3.14",
            "-0.25",
            ".5",
            "2024-01-15",
            "10.0.0.1",
            "12:30",
            "1,000",
        ] {
            assert_eq!(heuristic_route(&format!("/x/{seg}")), "/x/{id}", "{seg}");
        }
        for seg in ["-", "+", ".", "..", "-v"] {
            assert_eq!(
                heuristic_route(&format!("/x/{seg}")),
                format!("/x/{seg}"),
                "{seg}"
            );
        }
    }

    #[test]
    fn uuids_any_case() {
        assert_eq!(
            heuristic_route("/orders/123e4567-e89b-12d3-a456-426614174000/items"),
            "/orders/{id}/items"
        );
        assert_eq!(
            heuristic_route("/orders/123E4567-E89B-12D3-A456-426614174000"),
            "/orders/{id}"
        );
        // A UUID may by chance hold no decimal digit at all.
        assert_eq!(
            heuristic_route("/o/abcdefab-cdef-abcd-efab-cdefabcdefab"),
            "/o/{id}"
        );
    }

    #[test]
    fn hex_hashes() {
        assert_eq!(
            heuristic_route("/objects/507f1f77bcf86cd799439011"),
            "/objects/{id}"
        );
        assert_eq!(
            heuristic_route("/commit/da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            "/commit/{id}"
        );
        assert_eq!(heuristic_route("/b/deadbeefcafebabe"), "/b/{id}");
        // Fifteen hex letters could be a word; sixteen cannot reasonably be.
        assert_eq!(heuristic_route("/b/deadbeefcafebab"), "/b/deadbeefcafebab");
    }

    #[test]
    fn mixed_tokens() {
        assert_eq!(heuristic_route("/s/aGVsbG8gd29ybGQ1"), "/s/{id}");
        assert_eq!(heuristic_route("/s/dXNlcjE6c2VjcmV0_x-Y="), "/s/{id}");
        assert_eq!(heuristic_route("/orders/ord_12345"), "/orders/{id}");
        assert_eq!(heuristic_route("/p/my-post-title-2023"), "/p/{id}");
        // Long but no digit: a word, or a slug that is at least not unique per request.
        assert_eq!(
            heuristic_route("/docs/getting-started-guide"),
            "/docs/getting-started-guide"
        );
        assert_eq!(heuristic_route("/a/b1c2d3"), "/a/b1c2d3");
    }

    #[test]
    fn slashes_collapse_and_trailing_slash_drops() {
        assert_eq!(heuristic_route("//api///users//"), "/api/users");
        assert_eq!(heuristic_route("/users/"), "/users");
    }

    #[test]
    fn relative_path_gets_a_leading_slash() {
        assert_eq!(heuristic_route("users/42"), "/users/{id}");
    }

    #[test]
    fn query_fragment_and_absolute_form_are_stripped() {
        assert_eq!(heuristic_route("/users/42?x=/1/2"), "/users/{id}");
        assert_eq!(heuristic_route("/users/42#top"), "/users/{id}");
        assert_eq!(
            heuristic_route("http://example.com/users/42"),
            "/users/{id}"
        );
        assert_eq!(heuristic_route("HTTPS://example.com:8443"), "/");
        assert_eq!(heuristic_route("*"), "*");
    }

    #[test]
    fn long_segment_becomes_id() {
        let word = "z".repeat(MAX_SEGMENT_LEN);
        assert_eq!(heuristic_route(&format!("/{word}")), format!("/{word}"));
        let longer = "z".repeat(MAX_SEGMENT_LEN + 1);
        assert_eq!(heuristic_route(&format!("/{longer}/x")), "/{id}/x");
        // Multi-byte characters count in bytes and never split.
        let wide = "é".repeat(MAX_SEGMENT_LEN / 2 + 1);
        assert_eq!(heuristic_route(&format!("/{wide}")), "/{id}");
    }

    #[test]
    fn segment_count_is_capped() {
        let at_cap = "/a".repeat(MAX_SEGMENTS);
        assert_eq!(heuristic_route(&at_cap), at_cap);
        let over = "/a".repeat(MAX_SEGMENTS + 1);
        assert_eq!(heuristic_route(&over), format!("{at_cap}/*"));
        let huge = "/seg".repeat(100_000);
        let route = heuristic_route(&huge);
        assert_eq!(route, format!("{}/*", "/seg".repeat(MAX_SEGMENTS)));
    }

    #[test]
    fn output_is_bounded() {
        let seg = "z".repeat(MAX_SEGMENT_LEN);
        let path = format!("/{seg}").repeat(1000);
        let bound = MAX_SEGMENTS * (MAX_SEGMENT_LEN + 1) + 2;
        let route = heuristic_route(&path);
        assert!(route.contains(&seg));
        assert!(route.len() <= bound);
    }
}
