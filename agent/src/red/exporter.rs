//! The periodic OTLP metrics export: every interval, every series as it stands. Since the
//! histograms are cumulative, an export that fails loses nothing for good: the next one
//! carries the same counts and more.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message as _;
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep_until, timeout_at},
};

use super::{
    RedMetrics,
    config::{MetricsExportConfig, MetricsExporter},
    otlp,
};
use crate::{
    export::otlp::{
        OtlpClient, OtlpStartError, WarningLimiter,
        retry::{Deadline, RetryPolicy},
        signal::MetricSignal,
    },
    telemetry::metrics::Metrics,
};

/// Time the shutdown waits past its deadline for the worker to return, before abandoning it.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// The running metrics exporter (or nothing, when metrics are not pushed).
pub struct MetricsExportHandle {
    shutdown_tx: watch::Sender<Option<Instant>>,
    worker: Option<JoinHandle<()>>,
}

impl MetricsExportHandle {
    /// Sends the series once more and stops, giving up at `deadline` from now.
    pub fn shutdown(self, deadline: Duration) -> impl Future<Output = ()> + Send {
        let at = Instant::now() + deadline;
        self.shutdown_tx.send_replace(Some(at));
        let worker = self.worker;
        async move {
            let Some(mut worker) = worker else { return };
            if timeout_at(at + SHUTDOWN_GRACE, &mut worker).await.is_err() {
                worker.abort();
                log::warn!("metrics flush did not finish in time");
            }
        }
    }
}

/// Starts the exporter the configuration names. Must be called inside a tokio runtime.
pub fn spawn(
    config: MetricsExportConfig,
    red: RedMetrics,
    metrics: Arc<Metrics>,
) -> Result<MetricsExportHandle, OtlpStartError> {
    spawn_with(config, red, metrics, RetryPolicy::default())
}

pub(super) fn spawn_with(
    config: MetricsExportConfig,
    red: RedMetrics,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
) -> Result<MetricsExportHandle, OtlpStartError> {
    let (shutdown_tx, shutdown) = watch::channel(None);
    let worker = match &config.exporter {
        MetricsExporter::None => None,
        MetricsExporter::Otlp(otlp) => {
            let worker = Worker {
                client: OtlpClient::new(otlp, retry)?,
                red,
                metrics,
                interval: config.interval,
                timeout: config.timeout,
                shutdown,
                warnings: WarningLimiter::new("OTLP metrics export"),
            };
            Some(tokio::spawn(worker.run()))
        }
    };
    Ok(MetricsExportHandle {
        shutdown_tx,
        worker,
    })
}

struct Worker {
    client: OtlpClient<MetricSignal>,
    red: RedMetrics,
    metrics: Arc<Metrics>,
    interval: Duration,
    timeout: Duration,
    shutdown: watch::Receiver<Option<Instant>>,
    warnings: WarningLimiter,
}

impl Worker {
    async fn run(mut self) {
        let mut next = Instant::now() + self.interval;
        loop {
            tokio::select! {
                biased;
                // A dropped handle (`Err`) stops the worker like a shutdown does.
                _ = self.shutdown.changed() => break,
                () = sleep_until(next) => {
                    self.export().await;
                    // A slow export delays the next one rather than bunching them up.
                    next = (next + self.interval).max(Instant::now());
                }
            }
        }
        // The last counts, within what is left of the shutdown deadline.
        self.export().await;
    }

    async fn export(&mut self) {
        let series = self.red.snapshot();
        if series.is_empty() {
            return;
        }
        let request = otlp::to_request(&series, unix_now_ns());
        let points = otlp::point_count(&request);
        let mut deadline = Deadline::new(Instant::now() + self.timeout, self.shutdown.clone());
        let mut failed_attempts = 0;
        let result = self
            .client
            .deliver(
                request.encode_to_vec().into(),
                &mut deadline,
                &self.metrics.metric_export_failures,
                &mut failed_attempts,
            )
            .await;
        match result {
            Ok(delivered) => {
                let rejected = u64::try_from(delivered.rejected).unwrap_or(0).min(points);
                self.metrics.metric_points_exported.add(points - rejected);
                if rejected > 0 {
                    self.warnings.warn(format_args!(
                        "collector rejected {rejected} of {points} data points"
                    ));
                }
            }
            Err(error) => self.warnings.warn(format_args!(
                "{points} data points not delivered after {failed_attempts} failed attempts \
                 ({error}); the next export carries them"
            )),
        }
    }
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[path = "exporter_tests.rs"]
mod tests;
