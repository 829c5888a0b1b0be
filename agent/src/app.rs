//! Startup, the threads of a running agent, and orderly shutdown.
//!
//! Threads: the ring-buffer reader runs the whole pipeline (decode -> connections ->
//! HTTP/1 -> spans) so records are handled in kernel order without locks; the process
//! selector keeps the kernel's traced set current; a small tokio runtime runs the
//! exporter and the admin endpoint.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::sync_channel,
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;
use loupe_common::ProbeConfig;

use crate::{
    admin::{self, AdminState},
    cli::RunArgs,
    config::AgentConfig,
    cpu_priority,
    events::reader,
    export,
    kernel::btf,
    pipeline::{Pipeline, PipelineConfig},
    probes::{Probes, privileges},
    process::{resource::ResourceDefaults, selector::Selector},
    protocol::http1::Http1Limits,
    red,
    telemetry::metrics::Metrics,
};

/// What the exporter gets to deliver queued spans after SIGTERM; the whole shutdown
/// stays under five seconds.
const EXPORT_FLUSH_DEADLINE: Duration = Duration::from_secs(3);

/// Runs the agent until SIGTERM or SIGINT. The configuration was checked by
/// [`crate::config::load`] before anything is loaded into the kernel.
pub fn run(config: AgentConfig) -> anyhow::Result<()> {
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    let AgentConfig {
        run: cli,
        export: export_config,
        metrics_export: metrics_export_config,
        head_sampler,
        resource_attributes,
        routes,
        selection,
        ..
    } = config;
    privileges::check()?;
    let offsets = btf::kernel_offsets().context("reading kernel type information (BTF)")?;
    // One worker: export, the admin endpoint and metrics push are light, and a second
    // worker mostly added wakeups (tasks handed between idle workers).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loupe-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (red_recorder, red_metrics) = red::new(
        red::Limits {
            max_routes_per_service: cli.max_routes_per_service,
            max_series: cli.max_metric_series as usize,
            ..red::Limits::default()
        },
        metrics.clone(),
    );
    let admin_addr = runtime.block_on(admin::serve(
        cli.admin_addr,
        AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            red: red_metrics.clone(),
        },
    ))?;
    log::info!("span export: {}", export_config.exporter);
    let exporter = {
        let _guard = runtime.enter();
        export::spawn(export_config, metrics.clone())?
    };
    log::info!("metrics export: {}", metrics_export_config.exporter);
    let metrics_exporter = {
        let _guard = runtime.enter();
        red::spawn(metrics_export_config, red_metrics, metrics.clone())?
    };

    let probe_config = ProbeConfig {
        trace_all: selection.traces_everything() as u32,
        agent_tgid: std::process::id(),
        capture_bytes: cli.capture_bytes,
        filter_ports: (!cli.ports.is_empty()) as u32,
        offsets,
        inject_traceparent: cli.inject_traceparent as u32,
        // Filled in once tracefs is known to be mounted.
        fork_child_pid_offset: 0,
    };
    let mut probes = Probes::load(
        &probe_config,
        &cli.ports,
        &selection.exec_hints(),
        cli.ring_buffer_mib << 20,
        cli.data_probes,
    )?;
    let maps = probes.take_maps()?;
    let hooks = probes.data_hooks();
    log::info!(
        "reads hooked {}, writes {}",
        hooks.reads.describe(),
        hooks.writes.describe()
    );
    if let Some(injection) = probes.injection() {
        log::info!(
            "adding traceparent to outgoing HTTP/1.x requests of traced processes (sock_ops on cgroup {})",
            injection.cgroup.display()
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (notice_tx, notice_rx) = sync_channel(4096);
    let mut selector = Selector::new(selection, maps.processes, maps.connections, metrics.clone());
    selector.scan();
    let selector_thread = {
        let stop = stop.clone();
        thread::Builder::new()
            .name("loupe-select".into())
            .spawn(move || selector.run(notice_rx, &stop))?
    };

    let pipeline_config = PipelineConfig {
        sdk_spans: cli.sdk_spans,
        span_attributes: cli.span_attributes,
        head_sampler,
        tail_policy: cli.tail_policy(),
        max_connections: loupe_common::MAX_CONNECTIONS as usize,
        limits: Http1Limits::default(),
        routes,
        red: red_recorder,
    };
    let reader_thread = {
        let stop = stop.clone();
        let metrics = metrics.clone();
        let sender = exporter.sender();
        let (ring, counters, marks) = (maps.events, maps.counters, maps.marks);
        thread::Builder::new()
            .name("loupe-events".into())
            .spawn(move || {
                // Built on its own thread: the pipeline's trace links are single-threaded.
                let mut pipeline = Pipeline::new(
                    pipeline_config,
                    ResourceDefaults::new(resource_attributes),
                    sender,
                    metrics.clone(),
                    Some(counters),
                    marks,
                    notice_tx,
                );
                reader::run(ring, &mut pipeline, &metrics, &stop)
            })?
    };

    cpu_priority::lower_all_threads(cli.cpu_priority);
    ready.store(true, Ordering::Relaxed);
    log::info!(
        "tracing {}; admin on http://{admin_addr}",
        describe_selection(&cli)
    );

    runtime.block_on(wait_for_signal());
    log::info!("shutting down");
    stop.store(true, Ordering::Relaxed);
    ready.store(false, Ordering::Relaxed);
    let _ = reader_thread.join();
    let _ = selector_thread.join();
    // The programs come off while the spans flush: detaching waits on the kernel.
    let detaching = thread::Builder::new()
        .name("loupe-detach".into())
        .spawn(move || probes.detach());
    // Spans and metrics flush side by side, within the same deadline.
    // A hard cap over the flush too: a collector that hangs must not hold the exit.
    runtime.block_on(async {
        let flush = async {
            tokio::join!(
                exporter.shutdown(EXPORT_FLUSH_DEADLINE),
                metrics_exporter.shutdown(EXPORT_FLUSH_DEADLINE)
            )
        };
        if tokio::time::timeout(EXPORT_FLUSH_DEADLINE + Duration::from_millis(500), flush)
            .await
            .is_err()
        {
            log::warn!("export flush did not finish in time; exiting anyway");
        }
    });
    match detaching {
        Ok(detaching) => {
            let _ = detaching.join();
        }
        // The closure, and the probes in it, were dropped unrun: detached on the spot.
        Err(err) => log::debug!("detaching without a thread of its own: {err}"),
    }
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}

fn describe_selection(cli: &RunArgs) -> String {
    let mut parts = Vec::new();
    if !cli.pids.is_empty() {
        parts.push(format!("pids {:?}", cli.pids));
    }
    if !cli.exes.is_empty() {
        parts.push(format!("executables {:?}", cli.exes));
    }
    if parts.is_empty() {
        parts.push("all processes".into());
    }
    if !cli.ports.is_empty() {
        parts.push(format!("ports {:?}", cli.ports));
    }
    parts.join(", ")
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default disposition still ends the process.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
