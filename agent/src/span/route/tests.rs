use super::*;

fn matcher(patterns: &[&str]) -> RouteMatcher {
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    RouteMatcher::new(&patterns).unwrap_or_else(|e| panic!("valid patterns rejected: {e}"))
}

fn err(pattern: &str) -> Option<RoutePatternError> {
    RouteMatcher::new(&[pattern.to_string()]).err()
}

fn pattern(route: &str) -> (String, RouteSource) {
    (route.to_string(), RouteSource::Pattern)
}

fn heuristic(route: &str) -> (String, RouteSource) {
    (route.to_string(), RouteSource::Heuristic)
}

#[test]
fn no_patterns_uses_heuristic() {
    let m = RouteMatcher::default();
    assert_eq!(m.route("/users/42"), heuristic("/users/{id}"));
    assert_eq!(m.route(""), heuristic("/"));
}

#[test]
fn param_matches_one_segment() {
    let m = matcher(&["/orders/{id}"]);
    assert_eq!(m.route("/orders/abc"), pattern("/orders/{id}"));
    assert_eq!(m.route("/orders/abc/"), pattern("/orders/{id}"));
    assert_eq!(m.route("//orders//abc"), pattern("/orders/{id}"));
    assert_eq!(m.route("/orders"), heuristic("/orders"));
    assert_eq!(m.route("/orders/abc/items"), heuristic("/orders/abc/items"));
    assert_eq!(m.route("/Orders/abc"), heuristic("/Orders/abc"));
}

#[test]
fn several_params() {
    let m = matcher(&["/users/{user}/items/{item}"]);
    assert_eq!(
        m.route("/users/alice/items/lamp"),
        pattern("/users/{user}/items/{item}")
    );
    assert_eq!(
        m.route("/users/alice/things/lamp"),
        heuristic("/users/alice/things/lamp")
    );
}

#[test]
fn wildcard_matches_the_rest() {
    let m = matcher(&["/static/*"]);
    assert_eq!(m.route("/static/css/site.css"), pattern("/static/*"));
    assert_eq!(m.route("/static/a"), pattern("/static/*"));
    assert_eq!(m.route("/static"), pattern("/static/*"));
    assert_eq!(m.route("/staticx/a"), heuristic("/staticx/a"));
}

#[test]
fn root_pattern_matches_only_root() {
    let m = matcher(&["/"]);
    assert_eq!(m.route("/"), pattern("/"));
    assert_eq!(m.route(""), pattern("/"));
    assert_eq!(m.route("/a"), heuristic("/a"));
}

#[test]
fn catch_all_pattern() {
    let m = matcher(&["/*"]);
    assert_eq!(m.route("/anything/42"), pattern("/*"));
}

#[test]
fn literal_beats_param_regardless_of_order() {
    let m = matcher(&["/users/{id}", "/users/me"]);
    assert_eq!(m.route("/users/me"), pattern("/users/me"));
    assert_eq!(m.route("/users/7"), pattern("/users/{id}"));
}

#[test]
fn param_beats_wildcard_and_exact_beats_wildcard() {
    let m = matcher(&["/files/*", "/files/{name}/raw", "/files"]);
    assert_eq!(m.route("/files/a/raw"), pattern("/files/{name}/raw"));
    assert_eq!(m.route("/files/a/b/c"), pattern("/files/*"));
    assert_eq!(m.route("/files"), pattern("/files"));
}

#[test]
fn earlier_literal_position_decides() {
    let m = matcher(&["/{a}/items/{b}", "/api/{x}/{y}"]);
    assert_eq!(m.route("/api/items/3"), pattern("/api/{x}/{y}"));
}

#[test]
fn equal_specificity_keeps_user_order() {
    let m = matcher(&["/u/{first}", "/u/{second}"]);
    assert_eq!(m.route("/u/1"), pattern("/u/{first}"));
    let m = matcher(&["/u/{second}", "/u/{first}"]);
    assert_eq!(m.route("/u/1"), pattern("/u/{second}"));
}

#[test]
fn pattern_is_reported_canonically() {
    let m = matcher(&["  /a//{id}/  "]);
    assert_eq!(m.route("/a/1"), pattern("/a/{id}"));
}

#[test]
fn query_is_ignored_when_matching() {
    let m = matcher(&["/search"]);
    assert_eq!(m.route("/search?q=a/b"), pattern("/search"));
    assert_eq!(m.route("http://host/search"), pattern("/search"));
}

#[test]
fn long_path_against_patterns_stays_bounded() {
    let m = matcher(&["/a/{x}", "/a/*"]);
    let long = "/a".repeat(100_000);
    assert_eq!(m.route(&long), pattern("/a/*"));
    let m = matcher(&["/a/{x}"]);
    let (route, source) = m.route(&long);
    assert_eq!(source, RouteSource::Heuristic);
    assert!(route.len() < 64);
}

#[test]
fn invalid_patterns_are_rejected() {
    assert_eq!(err(""), Some(RoutePatternError::Empty));
    assert_eq!(err("   "), Some(RoutePatternError::Empty));
    let p = |s: &str| s.to_string();
    assert_eq!(
        err("orders/{id}"),
        Some(RoutePatternError::MissingLeadingSlash {
            pattern: p("orders/{id}")
        })
    );
    for bad in [
        "/orders/{id",
        "/orders/id}",
        "/a/{{id}}",
        "/a/{x/y}",
        "/a/}{",
    ] {
        assert_eq!(
            err(bad),
            Some(RoutePatternError::UnbalancedBraces { pattern: p(bad) }),
            "{bad}"
        );
    }
    assert_eq!(
        err("/a/{}"),
        Some(RoutePatternError::EmptyParam {
            pattern: p("/a/{}")
        })
    );
    for bad in ["/a/x{id}", "/a/{id}.json", "/a/{x}{y}"] {
        assert_eq!(
            err(bad),
            Some(RoutePatternError::PartialParam { pattern: p(bad) }),
            "{bad}"
        );
    }
    for bad in ["/a/*/b", "/a/*.css", "/a/**"] {
        assert_eq!(
            err(bad),
            Some(RoutePatternError::MisplacedWildcard { pattern: p(bad) }),
            "{bad}"
        );
    }
}

#[test]
fn one_bad_pattern_rejects_the_set() {
    let patterns = vec!["/ok/{id}".to_string(), "bad".to_string()];
    assert!(RouteMatcher::new(&patterns).is_err());
}

#[test]
fn errors_name_the_pattern() {
    let e = err("/a/{}").map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("/a/{}"), "{e}");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn heuristic_is_bounded_and_normalised(path in "[/a-zA-Z0-9._~%-]{0,400}") {
            let route = heuristic_route(&path);
            prop_assert!(route.starts_with('/'));
            prop_assert!(!route.contains("//"));
            prop_assert!(route == "/" || !route.ends_with('/'));
            prop_assert!(route.split('/').filter(|s| !s.is_empty()).count() <= 17);
            prop_assert!(route.len() <= 16 * 65 + 2);
        }

        #[test]
        fn heuristic_is_idempotent(path in "[/a-z0-9-]{0,200}") {
            let once = heuristic_route(&path);
            prop_assert_eq!(heuristic_route(&once), once.clone());
        }

        #[test]
        fn matcher_never_panics(pattern in ".{0,40}", path in ".{0,80}") {
            if let Ok(m) = RouteMatcher::new(&[pattern]) {
                let _ = m.route(&path);
            }
        }
    }
}

#[test]
fn module_doc_example_holds() {
    assert_eq!(
        heuristic_route("/api/v1/users/123/orders/5f9b2c7e8d1a4b3c2d1e0f9a"),
        "/api/v1/users/{id}/orders/{id}"
    );
    for word in [
        "users", "api", "v1", "v2.1", "2fa", "oauth2", "x86_64", "sha256",
    ] {
        assert_eq!(heuristic_route(&format!("/{word}")), format!("/{word}"));
    }
}

#[test]
fn routes_append_to_what_the_buffer_holds() {
    let routes = matcher(&["/users/{user}"]);
    for (path, route) in [
        ("/", "/"),
        ("", "/"),
        ("?q=1", "/"),
        ("*", "*"),
        ("/users/42", "/users/{user}"),
        ("/orders/42", "/orders/{id}"),
    ] {
        let mut out = String::from("GET ");
        routes.write_route(path, &mut out);
        assert_eq!(out, format!("GET {route}"), "{path:?}");
        assert_eq!(routes.route(path).0, route, "{path:?}");
    }
}
