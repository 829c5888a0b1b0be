//! Every series, behind the cardinality guard: at most `max_routes_per_service` routes per
//! service and instrument (the rest fold into `{other}`), at most `max_series` series (the
//! rest go to one overflow series per resource and instrument), and series idle for an hour
//! are forgotten so that departed processes and routes give their room back.

use std::{sync::Arc, time::Duration};

use hashbrown::HashMap;

use super::{
    histogram::Histogram,
    key::{OTHER_ROUTE, SeriesKey, SeriesRef},
};
use crate::span::{HttpSpan, Resource};

/// Overflow series allowed beyond `max_series`; past them an observation is dropped.
pub const MAX_OVERFLOW_SERIES: usize = 64;
/// How often idle series are looked for.
const SWEEP_INTERVAL_NS: u64 = 60_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_routes_per_service: usize,
    pub max_series: usize,
    /// A series with no request for this long is dropped; if requests come back it starts
    /// again from zero, with a new start time.
    pub idle_expiry: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_routes_per_service: 100,
            max_series: 10_000,
            idle_expiry: Duration::from_secs(3600),
        }
    }
}

/// What the guard did with one observation, for the agent's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The route was replaced by `{other}`.
    pub folded: bool,
    /// Recorded in the overflow series.
    pub overflow: bool,
    /// Not recorded at all.
    pub dropped: bool,
}

/// Series by key, and the routes admitted so far.
pub struct Store {
    limits: Limits,
    series: HashMap<Arc<SeriesKey>, Histogram>,
    /// Per instrument: service name -> admitted route -> how many live series use it.
    routes: [HashMap<String, HashMap<String, u32>>; 2],
    overflow_series: usize,
    last_sweep_ns: u64,
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            series: HashMap::new(),
            routes: [HashMap::new(), HashMap::new()],
            overflow_series: 0,
            last_sweep_ns: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Records one finished request.
    pub fn observe(&mut self, resource: &Arc<Resource>, span: &HttpSpan) -> Outcome {
        let now = span.end_unix_ns;
        if now >= self.last_sweep_ns.saturating_add(SWEEP_INTERVAL_NS) {
            self.sweep(now);
        } else if self.last_sweep_ns > now.saturating_add(SWEEP_INTERVAL_NS) {
            // The wall clock went back: count the interval from here. (Spans that merely
            // end out of order, by less than that, change nothing.)
            self.last_sweep_ns = now;
        }
        let duration = span.end_unix_ns.saturating_sub(span.start_unix_ns);
        let mut outcome = Outcome::default();
        let mut key = SeriesRef::of(resource, span);
        // A series of the route means the route was admitted: the route table is asked
        // only for a series not seen yet.
        if self.observe_existing(&key, duration, now) {
            return outcome;
        }
        if let Some(route) = key.route
            && !self.admits(key.instrument.index(), &resource.service_name, route)
        {
            key.route = Some(OTHER_ROUTE);
            outcome.folded = true;
            if self.observe_existing(&key, duration, now) {
                return outcome;
            }
        }
        let normal = self.series.len() - self.overflow_series;
        if normal < self.limits.max_series {
            self.insert(key, span, duration);
            return outcome;
        }
        let key = key.overflow();
        if self.observe_existing(&key, duration, now) {
            outcome.overflow = true;
        } else if self.overflow_series < MAX_OVERFLOW_SERIES {
            self.overflow_series += 1;
            self.insert(key, span, duration);
            outcome.overflow = true;
        } else {
            outcome.dropped = true;
        }
        outcome
    }

    /// Adds `duration` to the series of `key`, if there is one.
    fn observe_existing(&mut self, key: &SeriesRef<'_>, duration: u64, now: u64) -> bool {
        let Some(histogram) = self.series.get_mut(key) else {
            return false;
        };
        histogram.observe(duration, now);
        true
    }

    /// True when `route` already has series, or its service has room for one more route.
    fn admits(&self, instrument: usize, service: &str, route: &str) -> bool {
        let Some(routes) = self.routes[instrument].get(service) else {
            return self.limits.max_routes_per_service > 0;
        };
        routes.contains_key(route) || routes.len() < self.limits.max_routes_per_service
    }

    fn insert(&mut self, key: SeriesRef<'_>, span: &HttpSpan, duration: u64) {
        let owned = key.to_owned_key();
        if let Some(route) = &owned.route
            && route != OTHER_ROUTE
        {
            *self.routes[owned.instrument.index()]
                .entry(owned.resource.service_name.clone())
                .or_default()
                .entry(route.clone())
                .or_default() += 1;
        }
        let mut histogram = Histogram::new(span.start_unix_ns.min(span.end_unix_ns));
        histogram.observe(duration, span.end_unix_ns);
        self.series.insert(Arc::new(owned), histogram);
    }

    /// Forgets series idle for longer than the expiry.
    pub fn sweep(&mut self, now_ns: u64) {
        self.last_sweep_ns = now_ns;
        let expiry = u64::try_from(self.limits.idle_expiry.as_nanos()).unwrap_or(u64::MAX);
        let cutoff = now_ns.saturating_sub(expiry);
        if cutoff == 0 {
            return;
        }
        let mut gone = Vec::new();
        self.series.retain(|key, histogram| {
            let keep = histogram.last_unix_ns >= cutoff;
            if !keep {
                gone.push(Arc::clone(key));
            }
            keep
        });
        for key in gone {
            if key.overflow {
                self.overflow_series -= 1;
            }
            self.release_route(&key);
        }
    }

    fn release_route(&mut self, key: &SeriesKey) {
        let Some(route) = &key.route else { return };
        let services = &mut self.routes[key.instrument.index()];
        let Some(routes) = services.get_mut(&key.resource.service_name) else {
            return;
        };
        if let Some(count) = routes.get_mut(route) {
            *count -= 1;
            if *count == 0 {
                routes.remove(route);
            }
        }
        if routes.is_empty() {
            services.remove(&key.resource.service_name);
        }
    }

    /// A copy of every series; cheap enough to take under the lock (keys are shared).
    pub fn snapshot(&self) -> Vec<(Arc<SeriesKey>, Histogram)> {
        self.series
            .iter()
            .map(|(key, histogram)| (Arc::clone(key), histogram.clone()))
            .collect()
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
