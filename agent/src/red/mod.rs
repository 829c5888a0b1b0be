//! RED metrics (rate, errors, duration) of every request loupe sees, derived beside span
//! assembly: the `http.server.request.duration` and `http.client.request.duration`
//! histograms of the HTTP semantic conventions, in seconds, with the conventions' explicit
//! buckets and cumulative temporality.
//!
//! Every finished exchange is recorded before any sampling decision, so the counts are
//! exact whatever happens to the spans. The pipeline thread records through a
//! [`RedRecorder`] (one uncontended lock and one hash lookup per request, no allocation
//! unless a new series starts); the admin endpoint and the OTLP exporter read copies
//! through [`RedMetrics`].
//!
//! Attributes: `http.request.method`, `url.scheme`, `http.response.status_code` (absent
//! when no response came), `error.type` (when set), and on servers `http.route`; on clients
//! `url.template` (the route loupe named the span with, since clients have no `http.route`),
//! `server.address` and `server.port`. The service is the resource's `service.name`.
//!
//! Cardinality is bounded. Each service (by `service.name`) keeps at most
//! `--max-routes-per-service` routes per instrument (default 100); requests on further
//! routes are recorded under the route `{other}` and counted in
//! `loupe_red_routes_folded_total`. At most `--max-metric-series` series exist in all
//! (default 10 000); a request that would start one more is recorded in its resource's
//! overflow series (attribute `otel.metric.overflow=true`, as OpenTelemetry SDKs do) and
//! counted in `loupe_red_series_overflow_total`; past 64 overflow series it is dropped and
//! counted in `loupe_red_observations_dropped_total`. A series with no request for an hour
//! is forgotten, giving its route and slot back; it starts again from zero if requests
//! return. Processes that run an OpenTelemetry SDK whose spans loupe skips (`--sdk-spans
//! skip`) are left out here too: their SDK measures them.

mod config;
mod exporter;
mod histogram;
mod key;
mod otlp;
mod prometheus;
mod store;

use std::sync::{Arc, Mutex, MutexGuard};

pub use config::{MetricsConfigError, MetricsExportConfig, MetricsExporter};
pub use exporter::spawn;
pub use store::Limits;

use crate::{
    span::{HttpSpan, Resource},
    telemetry::metrics::Metrics,
};
use histogram::Histogram;
use key::SeriesKey;
use store::Store;

/// One series and its counts at the time of a snapshot.
pub type Series = (Arc<SeriesKey>, Histogram);

/// The write side, owned by the pipeline.
pub struct RedRecorder {
    store: Arc<Mutex<Store>>,
    metrics: Arc<Metrics>,
}

/// The read side: cheap to clone, for the admin endpoint and the exporter.
#[derive(Clone)]
pub struct RedMetrics {
    store: Arc<Mutex<Store>>,
}

/// An empty set of series, with its recorder and its reader.
pub fn new(limits: Limits, metrics: Arc<Metrics>) -> (RedRecorder, RedMetrics) {
    let store = Arc::new(Mutex::new(Store::new(limits)));
    (
        RedRecorder {
            store: Arc::clone(&store),
            metrics,
        },
        RedMetrics { store },
    )
}

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    // The store stays consistent between calls; a panic elsewhere must not stop metrics.
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedRecorder {
    /// Records one finished request or response-less exchange.
    pub fn record(&self, resource: &Arc<Resource>, span: &HttpSpan) {
        let (outcome, series) = {
            let mut store = lock(&self.store);
            (store.observe(resource, span), store.len())
        };
        if outcome.folded {
            self.metrics.red_routes_folded.inc();
        }
        if outcome.overflow {
            self.metrics.red_series_overflow.inc();
        }
        if outcome.dropped {
            self.metrics.red_observations_dropped.inc();
        }
        self.metrics.red_series.set(series as u64);
    }
}

impl RedMetrics {
    /// A copy of every series.
    pub fn snapshot(&self) -> Vec<Series> {
        lock(&self.store).snapshot()
    }

    /// Both histograms in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        prometheus::render(&self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::testutil::{http_span, resource},
        span::SpanKind,
    };

    #[test]
    fn recorder_counts_what_the_guard_does() {
        let metrics = Arc::new(Metrics::default());
        let limits = Limits {
            max_routes_per_service: 1,
            max_series: 2,
            ..Limits::default()
        };
        let (recorder, reader) = new(limits, Arc::clone(&metrics));
        let r = resource("shop");
        let span = |route: &str, status| {
            let mut span = http_span(SpanKind::Server, Some(status));
            span.route = Some(route.into());
            span
        };
        recorder.record(&r, &span("/a", 200));
        recorder.record(&r, &span("/b", 200)); // folded into {other}: a second series
        recorder.record(&r, &span("/a", 500)); // a third series: overflow
        assert_eq!(metrics.red_routes_folded.get(), 1);
        assert_eq!(metrics.red_series_overflow.get(), 1);
        assert_eq!(metrics.red_observations_dropped.get(), 0);
        assert_eq!(metrics.red_series.get(), 3);
        let total: u64 = reader.snapshot().iter().map(|(_, h)| h.count).sum();
        assert_eq!(total, 3, "nothing is lost");
    }
}
