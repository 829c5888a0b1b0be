//! Low-cardinality `http.route` values, so span names and metric attributes stay bounded
//! however many distinct URLs a service sees.
//!
//! **User patterns** come first. A pattern is a path template such as `/orders/{id}`,
//! `/users/{user}/items/{item}` or `/static/*`: a `{name}` segment matches exactly one path
//! segment, and a final `*` matches the rest of the path (including nothing, so `/static/*`
//! also covers `/static`). Literal segments compare case-sensitively. When several patterns
//! match, the most specific wins: comparing segment by segment from the left, a literal beats
//! a `{param}`, which beats `*`; an exact-length pattern beats one ending in `*`; remaining
//! ties go to the pattern listed first. The route reported is the pattern itself.
//!
//! **Otherwise a heuristic** derives the route from the path:
//! - the query string and fragment are dropped; duplicate slashes collapse and a trailing
//!   slash is dropped (`//api/users/` → `/api/users`); an empty path is `/`;
//! - a segment becomes `{id}` when it is
//!   - a number: all digits (`42`), signed or decimal (`-5`, `3.14`), or digit groups such as
//!     dates, times and IPv4 addresses (`2024-01-15`, `12:30`, `10.0.0.1`);
//!   - a UUID (8-4-4-4-12 hex digits, any case);
//!   - hex of 16 characters or more (hashes, object ids: `507f1f77bcf86cd799439011`);
//!   - a token of 16 characters or more made of letters, digits and `-_.~+=%` that
//!     contains a digit (base64-ish ids, numbered slugs: `aGVsbG8gd29ybGQ1`);
//!   - any segment with 5 digits or more (`ord_12345`);
//!   - longer than 64 bytes;
//! - everything else stays, so words and short versioned names survive: `users`, `api`,
//!   `v1`, `v2.1`, `2fa`, `oauth2`, `x86_64`, `sha256`;
//! - after 16 segments the rest of the path becomes `/*`.
//!
//! So `/api/v1/users/123/orders/5f9b2c7e8d1a4b3c2d1e0f9a` becomes
//! `/api/v1/users/{id}/orders/{id}`.

mod heuristic;

pub use heuristic::{MAX_SEGMENT_LEN, MAX_SEGMENTS, heuristic_route, write_heuristic_route};

/// Where a route came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteSource {
    /// A pattern the user configured.
    Pattern,
    /// The path heuristic.
    Heuristic,
}

/// Why a user route pattern was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutePatternError {
    #[error("route pattern is empty")]
    Empty,
    #[error("route pattern `{pattern}` must start with '/'")]
    MissingLeadingSlash { pattern: String },
    #[error("route pattern `{pattern}` has unbalanced braces")]
    UnbalancedBraces { pattern: String },
    #[error("route pattern `{pattern}` has an empty parameter `{{}}`")]
    EmptyParam { pattern: String },
    #[error("route pattern `{pattern}`: a `{{param}}` must be a whole segment")]
    PartialParam { pattern: String },
    #[error("route pattern `{pattern}`: `*` must be a whole segment at the end")]
    MisplacedWildcard { pattern: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Wildcard,
}

impl Segment {
    /// Lower is more specific.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Param => 1,
            Segment::Wildcard => 2,
        }
    }
}

#[derive(Clone, Debug)]
struct Pattern {
    route: String,
    segments: Vec<Segment>,
}

impl Pattern {
    fn parse(raw: &str) -> Result<Self, RoutePatternError> {
        let route = raw.trim();
        if route.is_empty() {
            return Err(RoutePatternError::Empty);
        }
        let pattern = || route.to_string();
        if !route.starts_with('/') {
            return Err(RoutePatternError::MissingLeadingSlash { pattern: pattern() });
        }
        check_braces(route)
            .ok_or_else(|| RoutePatternError::UnbalancedBraces { pattern: pattern() })?;
        let parts: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(RoutePatternError::MisplacedWildcard { pattern: pattern() });
                }
                Segment::Wildcard
            } else if *part == "{}" {
                return Err(RoutePatternError::EmptyParam { pattern: pattern() });
            } else if part.starts_with('{') && part.ends_with('}') && part.matches('{').count() == 1
            {
                Segment::Param
            } else if part.contains(['{', '}']) {
                return Err(RoutePatternError::PartialParam { pattern: pattern() });
            } else if part.contains('*') {
                return Err(RoutePatternError::MisplacedWildcard { pattern: pattern() });
            } else {
                Segment::Literal((*part).to_string())
            };
            segments.push(segment);
        }
        // Report the canonical form, as the heuristic does: `/a//b/` is `/a/b`.
        let mut route = String::with_capacity(route.len());
        for part in &parts {
            route.push('/');
            route.push_str(part);
        }
        if route.is_empty() {
            route.push('/');
        }
        Ok(Pattern { route, segments })
    }

    /// Walks the path lazily, so a pathologically long path costs no more than the pattern.
    fn matches(&self, path: &str) -> bool {
        let mut path_segments = path.split('/').filter(|s| !s.is_empty());
        for segment in &self.segments {
            match segment {
                Segment::Wildcard => return true,
                Segment::Param => {
                    if path_segments.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if path_segments.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        path_segments.next().is_none()
    }

    fn specificity(&self) -> Vec<u8> {
        self.segments.iter().map(Segment::rank).collect()
    }
}

/// Braces must pair up, without nesting, within one segment.
fn check_braces(route: &str) -> Option<()> {
    let mut open = false;
    for c in route.chars() {
        match c {
            '{' if open => return None,
            '{' => open = true,
            '}' if !open => return None,
            '}' => open = false,
            '/' if open => return None,
            _ => {}
        }
    }
    (!open).then_some(())
}

/// Maps request paths to routes: user patterns first, then [`heuristic_route`].
#[derive(Clone, Debug, Default)]
pub struct RouteMatcher {
    /// Most specific first, so the first match is the answer.
    patterns: Vec<Pattern>,
}

impl RouteMatcher {
    /// Compiles user patterns; any invalid one rejects the whole set, so a typo is reported
    /// at startup rather than silently ignored.
    pub fn new(patterns: &[String]) -> Result<Self, RoutePatternError> {
        let mut compiled = patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        // Stable: equally specific patterns keep the order the user gave.
        compiled.sort_by_cached_key(Pattern::specificity);
        Ok(RouteMatcher { patterns: compiled })
    }

    /// The route of a request path, and whether a user pattern or the heuristic produced it.
    pub fn route(&self, path: &str) -> (String, RouteSource) {
        let mut route = String::new();
        let source = self.write_route(path, &mut route);
        (route, source)
    }

    /// [`RouteMatcher::route`], appended to `out`: the span assembler builds routes in a
    /// reused buffer.
    pub fn write_route(&self, path: &str, out: &mut String) -> RouteSource {
        let path = heuristic::strip_to_path(path);
        match self.patterns.iter().find(|p| p.matches(path)) {
            Some(p) => {
                out.push_str(&p.route);
                RouteSource::Pattern
            }
            None => {
                write_heuristic_route(path, out);
                RouteSource::Heuristic
            }
        }
    }
}

#[cfg(test)]
mod tests;
