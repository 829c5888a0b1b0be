//! The route heuristic and user route patterns on arbitrary paths.
//!
//! Input layout: lines; the last is the request path, the ones before it are route patterns
//! (all of them rejected or all compiled, as at startup).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe::span::route::{
    MAX_SEGMENT_LEN, MAX_SEGMENTS, RouteMatcher, RouteSource, heuristic_route,
};

/// Each kept segment is `/` plus at most `MAX_SEGMENT_LEN` bytes, then `/*` for the rest.
const MAX_ROUTE_LEN: usize = MAX_SEGMENTS * (MAX_SEGMENT_LEN + 1) + 2;

fn check_heuristic(path: &str) -> String {
    let route = heuristic_route(path);
    assert!(
        route.len() <= MAX_ROUTE_LEN,
        "{} bytes: {route}",
        route.len()
    );
    assert!(route == "*" || route.starts_with('/'), "{route}");
    assert!(!route.contains("//"), "{route}");
    assert!(!route.contains(['?', '#']), "{route}");
    assert_eq!(heuristic_route(&route), route, "not idempotent on {path:?}");
    route
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let path = lines.pop().unwrap_or_default();
    let heuristic = check_heuristic(path);
    let patterns: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let Ok(matcher) = RouteMatcher::new(&patterns) else {
        return;
    };
    let (route, source) = matcher.route(path);
    match source {
        RouteSource::Heuristic => assert_eq!(route, heuristic),
        // Reported in canonical form, whatever slashes the user wrote.
        RouteSource::Pattern => assert!(
            route == "/"
                || (route.starts_with('/') && !route.contains("//") && !route.ends_with('/')),
            "{route}"
        ),
    }
});
