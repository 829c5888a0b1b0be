use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    export::testutil::{http_span, resource},
    red::key::Instrument,
    span::{HttpSpan, SpanKind},
};

const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000_000_000;

fn server(route: &str, status: u16, ms: u64) -> HttpSpan {
    let mut span = http_span(SpanKind::Server, Some(status));
    span.route = Some(route.into());
    span.name = format!("GET {route}").into();
    span.start_unix_ns = T0;
    span.end_unix_ns = T0 + ms * MS;
    span
}

fn limits(max_routes: usize, max_series: usize) -> Limits {
    Limits {
        max_routes_per_service: max_routes,
        max_series,
        idle_expiry: Duration::from_secs(3600),
    }
}

/// (route, count) of every series of one instrument, sorted.
fn routes(store: &Store, instrument: Instrument) -> Vec<(Option<String>, u64)> {
    let mut out: Vec<_> = store
        .snapshot()
        .into_iter()
        .filter(|(k, _)| k.instrument == instrument)
        .map(|(k, h)| (k.route.clone(), h.count))
        .collect();
    out.sort();
    out
}

#[test]
fn one_series_per_attribute_set() {
    let mut store = Store::new(Limits::default());
    let r = resource("shop");
    for span in [
        server("/a", 200, 3),
        server("/a", 200, 30),
        server("/a", 404, 1),
        server("/b", 200, 1),
    ] {
        assert_eq!(store.observe(&r, &span), Outcome::default());
    }
    assert_eq!(store.len(), 3);
    let snapshot = store.snapshot();
    let (_, a200) = snapshot
        .iter()
        .find(|(k, _)| k.route.as_deref() == Some("/a") && k.status_code == Some(200))
        .unwrap();
    assert_eq!(a200.count, 2);
    assert_eq!(a200.buckets[0], 1);
    assert_eq!(a200.buckets[3], 1);
    assert_eq!(a200.sum_ns, 33 * MS);
    assert_eq!(a200.start_unix_ns, T0);
}

#[test]
fn server_and_client_are_separate_instruments() {
    let mut store = Store::new(Limits::default());
    let r = resource("shop");
    store.observe(&r, &server("/a", 200, 1));
    let mut client = http_span(SpanKind::Client, Some(200));
    client.name = "GET /a".into();
    client.server_address = Some("db".into());
    client.server_port = Some(5984);
    store.observe(&r, &client);
    assert_eq!(store.len(), 2);
    let snapshot = store.snapshot();
    let (key, _) = snapshot
        .iter()
        .find(|(k, _)| k.instrument == Instrument::Client)
        .unwrap();
    assert_eq!(
        key.route.as_deref(),
        Some("/a"),
        "client route from the span name"
    );
    assert_eq!(key.server_address.as_deref(), Some("db"));
    assert_eq!(key.server_port, Some(5984));
}

#[test]
fn equal_resources_share_series_distinct_ones_do_not() {
    let mut store = Store::new(Limits::default());
    let first = resource("shop");
    let rebuilt = resource("shop");
    store.observe(&first, &server("/a", 200, 1));
    store.observe(&rebuilt, &server("/a", 200, 1));
    assert_eq!(store.len(), 1, "same content, another Arc: same series");
    let mut other_process = (*resource("shop")).clone();
    other_process.attributes[1].1 = crate::span::AttrValue::Int(99);
    store.observe(&Arc::new(other_process), &server("/a", 200, 1));
    assert_eq!(
        store.len(),
        2,
        "another process of the service: its own series"
    );
}

#[test]
fn routes_beyond_the_limit_fold_into_other() {
    let mut store = Store::new(limits(2, 1000));
    let r = resource("shop");
    assert!(!store.observe(&r, &server("/a", 200, 1)).folded);
    assert!(!store.observe(&r, &server("/b", 200, 1)).folded);
    // A known route with a new status is still admitted.
    assert!(!store.observe(&r, &server("/a", 500, 1)).folded);
    assert!(store.observe(&r, &server("/c", 200, 1)).folded);
    assert!(store.observe(&r, &server("/d", 200, 1)).folded);
    assert_eq!(
        routes(&store, Instrument::Server),
        vec![
            (Some("/a".into()), 1),
            (Some("/a".into()), 1),
            (Some("/b".into()), 1),
            (Some("{other}".into()), 2),
        ]
    );
    // The limit is per service: another service has its own room.
    let other = resource("billing");
    assert!(!store.observe(&other, &server("/c", 200, 1)).folded);
}

#[test]
fn zero_routes_folds_everything() {
    let mut store = Store::new(limits(0, 1000));
    assert!(store.observe(&resource("s"), &server("/a", 200, 1)).folded);
    assert_eq!(
        routes(&store, Instrument::Server),
        vec![(Some("{other}".into()), 1)]
    );
}

#[test]
fn series_beyond_the_limit_go_to_the_overflow_series() {
    let mut store = Store::new(limits(100, 2));
    let r = resource("shop");
    store.observe(&r, &server("/a", 200, 1));
    store.observe(&r, &server("/b", 200, 1));
    let outcome = store.observe(&r, &server("/c", 200, 1));
    assert!(outcome.overflow && !outcome.dropped);
    assert!(store.observe(&r, &server("/d", 200, 1)).overflow);
    // Existing series keep counting.
    assert_eq!(store.observe(&r, &server("/a", 200, 1)), Outcome::default());
    assert_eq!(store.len(), 3);
    let snapshot = store.snapshot();
    let (key, overflow) = snapshot.iter().find(|(k, _)| k.overflow).unwrap();
    assert_eq!(overflow.count, 2);
    assert!(key.route.is_none() && key.status_code.is_none() && key.method.is_empty());
}

#[test]
fn overflow_series_are_bounded_too() {
    let mut store = Store::new(limits(100, 0));
    for i in 0..MAX_OVERFLOW_SERIES {
        let outcome = store.observe(&resource(&format!("s{i}")), &server("/a", 200, 1));
        assert!(outcome.overflow);
    }
    let outcome = store.observe(&resource("one-too-many"), &server("/a", 200, 1));
    assert!(outcome.dropped && !outcome.overflow);
    assert_eq!(store.len(), MAX_OVERFLOW_SERIES);
}

#[test]
fn idle_series_are_forgotten_and_give_their_route_back() {
    let mut store = Store::new(limits(1, 1000));
    let r = resource("shop");
    store.observe(&r, &server("/old", 200, 1));
    assert!(store.observe(&r, &server("/new", 200, 1)).folded);
    // Two hours later the old route is gone and the new one gets the room.
    let mut later = server("/new", 200, 1);
    later.start_unix_ns += 7200 * 1_000_000_000;
    later.end_unix_ns += 7200 * 1_000_000_000;
    assert!(!store.observe(&r, &later).folded);
    assert_eq!(
        routes(&store, Instrument::Server),
        vec![(Some("/new".into()), 1)]
    );
}

#[test]
fn idle_overflow_series_free_their_slot() {
    let mut store = Store::new(limits(100, 0));
    store.observe(&resource("s"), &server("/a", 200, 1));
    assert_eq!(store.overflow_series, 1);
    store.sweep(T0 + 7200 * 1_000_000_000);
    assert_eq!((store.len(), store.overflow_series), (0, 0));
}

#[test]
fn active_series_survive_a_sweep() {
    let mut store = Store::new(Limits::default());
    let r = resource("shop");
    store.observe(&r, &server("/a", 200, 1));
    store.sweep(T0 + 600 * 1_000_000_000);
    assert_eq!(store.len(), 1);
}

#[test]
fn a_span_ending_before_it_started_counts_as_zero() {
    let mut store = Store::new(Limits::default());
    let mut span = server("/a", 200, 0);
    span.end_unix_ns = T0 - 5;
    store.observe(&resource("s"), &span);
    let (_, h) = &store.snapshot()[0];
    assert_eq!((h.count, h.sum_ns, h.buckets[0]), (1, 0, 1));
    assert!(h.start_unix_ns <= h.last_unix_ns);
}

#[test]
fn sweeps_run_once_a_minute_whatever_the_order_of_spans() {
    let mut store = Store::new(Limits::default());
    let r = resource("shop");
    store.observe(&r, &server("/a", 200, 10));
    let first = store.last_sweep_ns;
    assert_eq!(first, T0 + 10 * MS);
    // A span that ended a little earlier (another connection) does not trigger a sweep.
    store.observe(&r, &server("/a", 200, 1));
    assert_eq!(store.last_sweep_ns, first);
    let mut late = server("/a", 200, 1);
    late.start_unix_ns += 61 * 1_000_000_000;
    late.end_unix_ns += 61 * 1_000_000_000;
    store.observe(&r, &late);
    assert_eq!(store.last_sweep_ns, late.end_unix_ns);
    // The clock jumping back an hour restarts the count without sweeping anything.
    let mut back = server("/a", 200, 1);
    back.start_unix_ns -= 3600 * 1_000_000_000;
    back.end_unix_ns -= 3600 * 1_000_000_000;
    store.observe(&r, &back);
    assert_eq!(store.last_sweep_ns, back.end_unix_ns);
    assert_eq!(store.len(), 1);
}
