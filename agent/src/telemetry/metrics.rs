//! Counters every pipeline stage bumps, rendered as Prometheus text on `/metrics`.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        // The pipeline adds its per-record tallies, nearly always 0, for every record: a
        // locked add costs tens of cycles even uncontended, and more when another thread
        // last touched the line, where a branch costs next to nothing.
        if n != 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }
    /// For values the kernel keeps (its per-CPU counters): the latest total wins.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! metrics {
    ($( $field:ident : $ty:ident = $name:literal, $help:literal; )*) => {
        /// Every counter the agent exposes. Field names match the Prometheus names
        /// without the `loupe_` prefix.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( pub $field: $ty, )*
        }

        impl Metrics {
            /// Prometheus text exposition format, version 0.0.4.
            pub fn render_prometheus(&self) -> String {
                let mut out = String::new();
                $(
                    let kind = if stringify!($ty) == "Counter" { "counter" } else { "gauge" };
                    let _ = writeln!(out, "# HELP {} {}", $name, $help);
                    let _ = writeln!(out, "# TYPE {} {}", $name, kind);
                    let _ = writeln!(out, "{} {}", $name, self.$field.get());
                )*
                out
            }
        }
    };
}

metrics! {
    events_read: Counter = "loupe_events_read_total", "Records read from the kernel ring buffer.";
    reader_waits: Counter = "loupe_reader_waits_for_export_total", "Pauses of 5 ms the ring-buffer reader took, leaving records in the ring, because the export queue was full (at most 100 ms in a row).";
    events_malformed: Counter = "loupe_events_malformed_total", "Ring-buffer records that could not be decoded.";
    ringbuf_drops: Counter = "loupe_ringbuf_drops_total", "Records the kernel dropped because the ring buffer was full.";
    kernel_pending_full: Counter = "loupe_kernel_pending_table_full_total", "Syscalls not traced because the kernel's pending-call table (one slot per traced thread) was full.";
    kernel_conn_table_full: Counter = "loupe_kernel_connection_table_full_total", "Connections not traced because the kernel's connection table (65,536) was full.";
    kernel_read_failures: Counter = "loupe_kernel_read_failures_total", "Kernel or user memory reads that failed in the probes.";
    kernel_write_start_unknown: Counter = "loupe_kernel_write_start_unknown_total", "Client writes captured at their return without the time their bytes went out (the socket's last send was over 1 ms before the write returned: a write preempted after sending); their spans start at the write's return. Writes on accepted connections need no start and are not counted.";
    kernel_conn_cache_misses: Counter = "loupe_kernel_connection_cache_misses_total", "Reads and writes on known connections that the kernel's connection cache (4,096 slots) could not answer, so the probe looked in the connection table, the slower path. An evicted connection takes its slot back once the slot is free; steady growth means busy connections share slots (a process with more than 4,096 fds, or many traced processes).";
    kernel_response_bodies_skipped: Counter = "loupe_kernel_response_bodies_skipped_total", "Server responses written as two buffers, a whole head and then its body, of which the probe copied only the head: the body is never exported, and the head's Content-Length accounts for it.";
    response_body_skips_stopped: Counter = "loupe_response_body_skips_stopped_total", "Processes whose responses loupe copies whole from now on, because a body buffer it had left uncopied held more than that body, once per process: a chunked body (that response's span then waited for the next request to go out) or the next pipelined response (lost).";
    traceparent_injected: Counter = "loupe_traceparent_injected_total", "Outgoing HTTP/1.x requests loupe added a traceparent header to (--inject-traceparent).";
    traceparent_skipped_present: Counter = "loupe_traceparent_skipped_present_total", "Outgoing requests sent untouched because they already carried a traceparent.";
    traceparent_skipped_unsafe: Counter = "loupe_traceparent_skipped_unsafe_total", "Outgoing requests sent untouched because loupe could not check them safely (head split or over 4 KiB, chunked or pipelined body, malformed).";
    traceparent_inject_failures: Counter = "loupe_traceparent_inject_failures_total", "Header insertions a kernel helper failed; the request went out untouched.";
    traceparent_socket_failures: Counter = "loupe_traceparent_socket_failures_total", "Connections of traced processes left without injection because the kernel's socket map was full.";
    connections_opened: Counter = "loupe_connections_opened_total", "TCP connections that became known.";
    connections_dropped: Counter = "loupe_connections_dropped_total", "Connections forgotten because the connection table was full.";
    connections_ignored: Counter = "loupe_connections_ignored_total", "Long-lived connections whose bytes the probes stopped capturing because they carry no HTTP/1.x (TLS, a database's protocol, a WebSocket after its upgrade).";
    connections_active: Gauge = "loupe_connections_active", "TCP connections currently tracked.";
    bytes_unparsed: Counter = "loupe_bytes_unparsed_total", "Captured bytes that did not belong to any recognised protocol.";
    parse_errors: Counter = "loupe_parse_errors_total", "HTTP messages that could not be parsed.";
    exchanges_incomplete: Counter = "loupe_exchanges_incomplete_total", "Requests whose response never came (connection closed, process exited).";
    spans_created: Counter = "loupe_spans_created_total", "Spans built from requests and responses.";
    spans_exported: Counter = "loupe_spans_exported_total", "Spans the exporter delivered.";
    spans_dropped: Counter = "loupe_spans_dropped_total", "Spans lost: export queue full or export failed for good.";
    export_failures: Counter = "loupe_export_failures_total", "Export requests that failed (each retry counts).";
    export_queue_spans: Gauge = "loupe_export_queue_spans", "Spans accepted for export and not yet delivered or dropped.";
    client_spans_unplaced: Counter = "loupe_client_spans_unplaced_total", "CLIENT spans of a process that was serving requests, placed under none of them.";
    client_spans_guessed: Counter = "loupe_client_spans_guessed_total", "CLIENT spans placed while several requests were in flight on one event-loop thread: under the one the thread last read for, else the latest (wrong when a timer woke the handler).";
    client_spans_linked_to_server: Counter = "loupe_client_spans_linked_to_server_total", "CLIENT spans the kernel sent in a trace of its own (--inject-traceparent) while their process served a request loupe would have put them under: they start the trace the server they called continues, with a span link to that request.";
    opaque_answers_followed: Counter = "loupe_opaque_answers_followed_total", "Answers on connections loupe does not parse (a database's, a cache's, TLS) matched to the request whose call they answered: that request's handler woke, and its thread's next calls are placed under it.";
    opaque_answers_by_order: Counter = "loupe_opaque_answers_by_order_total", "Answers on connections loupe does not parse read while several calls waited there (pipelined): matched to the oldest, which is wrong when one read brought several answers or the protocol answers out of order.";
    client_span_starts_moved: Counter = "loupe_client_span_starts_moved_total", "CLIENT spans made to start with the SERVER span they caused, which the time their first write carried fell after (an acknowledgement that came in before the write returned, a write that waited for room, or a write whose send time was unknown).";
    server_span_ends_moved: Counter = "loupe_server_span_ends_moved_total", "SERVER spans made to end with the CLIENT span that caused them, whose read of the whole response returned before the server's write did (on another CPU).";
    client_span_ends_moved: Counter = "loupe_client_span_ends_moved_total", "CLIENT spans made to end with the SERVER span they caused, made first, whose write of the response returned after the client's read of it did (on another CPU).";
    server_spans_peer_unmatched: Counter = "loupe_server_spans_peer_unmatched_total", "SERVER spans whose client loupe also traces, left without that client span as parent.";
    server_spans_awaited_client: Counter = "loupe_server_spans_awaited_client_total", "SERVER spans complete before the request record of their client, which loupe also traces, was read: held until it linked them or a wait ran out.";
    spans_held_with_server: Counter = "loupe_spans_held_with_server_total", "Spans held because the SERVER span at the top of their trace (they are its calls, or spans those caused) still awaited its traced client's request record, so that they join the trace that record gives it.";
    linker_requests_dropped: Counter = "loupe_linker_requests_dropped_total", "Requests in flight the trace linker's full tables could not keep: their spans may start traces of their own.";
    idle_endpoints_dropped: Counter = "loupe_idle_endpoints_dropped_total", "Connections idle for five minutes whose endpoints could not be kept (as many are kept as connections are tracked): used again, their spans lack peer addresses and cross-process links.";
    spans_skipped_own_export: Counter = "loupe_spans_skipped_own_export_total", "Requests of loupe's own OTLP exports seen at a collector loupe traces: neither spans nor request metrics.";
    spans_skipped_sdk: Counter = "loupe_spans_skipped_sdk_total", "Spans not exported because their process runs an OpenTelemetry SDK that exports them.";
    spans_sampled_out: Counter = "loupe_spans_sampled_out_total", "Spans not exported by head sampling (OTEL_TRACES_SAMPLER).";
    spans_tail_dropped: Counter = "loupe_spans_tail_dropped_total", "Spans not exported by tail sampling.";
    tail_decisions_forced: Counter = "loupe_tail_decisions_forced_total", "Traces decided before their wait ended because the tail-sampling buffer was full.";
    tail_held_spans: Gauge = "loupe_tail_held_spans", "Spans waiting for a tail-sampling decision.";
    traced_processes: Gauge = "loupe_traced_processes", "Processes currently selected for tracing.";
    kernel_connections_pruned: Counter = "loupe_kernel_connections_pruned_total", "Entries of the kernel's connection table dropped because their process exited without closing them, a newer process took its pid over, or it called exec (whose closing of close-on-exec fds the probes do not see): the new program's fds must not be taken for the old connections.";
    reused_pids: Counter = "loupe_reused_pids_total", "Pids of traced processes that a new process took over between two scans of /proc (every 2 s); the new process was judged anew and the old one's connection entries dropped.";
    red_series: Gauge = "loupe_red_series", "Request-duration series currently kept (http.server/client.request.duration).";
    red_routes_folded: Counter = "loupe_red_routes_folded_total", "Requests recorded under the route {other} because their service already had --max-routes-per-service routes.";
    red_series_overflow: Counter = "loupe_red_series_overflow_total", "Requests recorded in an overflow series (otel_metric_overflow=\"true\") because the series limit was reached.";
    red_observations_dropped: Counter = "loupe_red_observations_dropped_total", "Requests not recorded in any request-duration series: series limit and overflow series exhausted.";
    metric_points_exported: Counter = "loupe_metric_points_exported_total", "Histogram data points the OTLP metrics exporter delivered.";
    metric_export_failures: Counter = "loupe_metric_export_failures_total", "OTLP metrics export requests that failed (each retry counts).";
}

impl Metrics {
    /// Copies the kernel's counters (totals over CPUs, indexed like `loupe_common::counter`).
    pub fn set_kernel_counters(&self, kernel: &[u64; loupe_common::counter::COUNT as usize]) {
        use loupe_common::counter;
        let at = |index: u32| kernel[index as usize];
        self.ringbuf_drops.set(at(counter::RINGBUF_DROPS));
        self.kernel_pending_full.set(at(counter::PENDING_FULL));
        self.kernel_conn_table_full
            .set(at(counter::CONN_TABLE_FULL));
        self.kernel_read_failures.set(at(counter::READ_FAILURES));
        self.kernel_write_start_unknown
            .set(at(counter::WRITE_START_UNKNOWN));
        self.kernel_conn_cache_misses
            .set(at(counter::CONN_CACHE_MISSES));
        self.kernel_response_bodies_skipped
            .set(at(counter::RESPONSE_BODIES_SKIPPED));
        self.set_injection_counters(kernel);
    }

    /// Copies the kernel's `--inject-traceparent` counters (totals over CPUs, indexed like
    /// `loupe_common::counter`).
    pub fn set_injection_counters(&self, kernel: &[u64; loupe_common::counter::COUNT as usize]) {
        use loupe_common::counter;
        let at = |index: u32| kernel[index as usize];
        self.traceparent_injected.set(at(counter::INJECTED));
        self.traceparent_skipped_present
            .set(at(counter::INJECT_SKIPPED_PRESENT));
        self.traceparent_skipped_unsafe
            .set(at(counter::INJECT_SKIPPED_UNSAFE));
        self.traceparent_inject_failures
            .set(at(counter::INJECT_FAILED));
        self.traceparent_socket_failures
            .set(at(counter::INJECT_SOCKET_FAILED));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_common::counter;

    #[test]
    fn injection_counters_land_on_their_own_metrics() {
        let metrics = Metrics::default();
        let mut kernel = [0u64; counter::COUNT as usize];
        kernel[counter::INJECTED as usize] = 5;
        kernel[counter::INJECT_SKIPPED_PRESENT as usize] = 4;
        kernel[counter::INJECT_SKIPPED_UNSAFE as usize] = 3;
        kernel[counter::INJECT_FAILED as usize] = 2;
        kernel[counter::INJECT_SOCKET_FAILED as usize] = 1;
        kernel[counter::RINGBUF_DROPS as usize] = 77;
        metrics.set_injection_counters(&kernel);
        let text = metrics.render_prometheus();
        assert!(text.contains("\nloupe_traceparent_injected_total 5\n"));
        assert!(text.contains("\nloupe_traceparent_skipped_present_total 4\n"));
        assert!(text.contains("\nloupe_traceparent_skipped_unsafe_total 3\n"));
        assert!(text.contains("\nloupe_traceparent_inject_failures_total 2\n"));
        assert!(text.contains("\nloupe_traceparent_socket_failures_total 1\n"));
        // Not one of them: the ring-buffer counter is copied elsewhere.
        assert!(text.contains("\nloupe_ringbuf_drops_total 0\n"));
    }

    #[test]
    fn every_kernel_counter_lands_on_its_own_metric() {
        let metrics = Metrics::default();
        // Each counter its index plus 100, so a swap shows.
        let kernel: [u64; counter::COUNT as usize] = std::array::from_fn(|i| 100 + i as u64);
        metrics.set_kernel_counters(&kernel);
        let text = metrics.render_prometheus();
        for (name, index) in [
            ("loupe_ringbuf_drops_total", counter::RINGBUF_DROPS),
            (
                "loupe_kernel_pending_table_full_total",
                counter::PENDING_FULL,
            ),
            (
                "loupe_kernel_connection_table_full_total",
                counter::CONN_TABLE_FULL,
            ),
            ("loupe_kernel_read_failures_total", counter::READ_FAILURES),
            ("loupe_traceparent_injected_total", counter::INJECTED),
            (
                "loupe_kernel_write_start_unknown_total",
                counter::WRITE_START_UNKNOWN,
            ),
            (
                "loupe_kernel_connection_cache_misses_total",
                counter::CONN_CACHE_MISSES,
            ),
            (
                "loupe_kernel_response_bodies_skipped_total",
                counter::RESPONSE_BODIES_SKIPPED,
            ),
        ] {
            let line = format!("\n{name} {}\n", 100 + index);
            assert!(text.contains(&line), "{line:?} in {text}");
        }
    }
}
