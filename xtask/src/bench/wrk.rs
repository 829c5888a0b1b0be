//! Closed-loop throughput with wrk: as many requests as the connections can carry.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::process::{Guard, interrupted};

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum WrkParseError {
    #[error("no `Requests/sec:` line")]
    NoRate,
    #[error("no `N requests in T` line")]
    NoTotal,
    #[error("no latency distribution (was --latency given?)")]
    NoLatency,
    #[error("unreadable value {0:?}")]
    BadValue(String),
}

/// Latencies in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    pub p50_us: f64,
    pub p75_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub latency: Latency,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    pub non_2xx_3xx: u64,
}

/// Parses wrk's report as printed with `--latency`.
pub fn parse(text: &str) -> Result<WrkResult, WrkParseError> {
    let mut rate = None;
    let mut total = None;
    let mut latency = Latency::default();
    let mut percentiles_seen = 0;
    let mut socket_errors = 0;
    let mut non_2xx_3xx = 0;
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            rate = Some(number(value.trim())?);
        } else if let Some((count, rest)) = line.split_once(" requests in ") {
            let count = count.trim();
            let seconds = rest.split(',').next().unwrap_or("").trim();
            total = Some((
                count.parse().map_err(|_| bad(count))?,
                duration_us(seconds)? / 1e6,
            ));
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let value = part.split_whitespace().last().unwrap_or("");
                socket_errors += value.parse::<u64>().map_err(|_| bad(value))?;
            }
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            let value = value.trim();
            non_2xx_3xx = value.parse().map_err(|_| bad(value))?;
        } else if let Some((pct, value)) = line.split_once("%  ").or_else(|| line.split_once("% "))
        {
            let slot = match pct.trim() {
                "50" => &mut latency.p50_us,
                "75" => &mut latency.p75_us,
                "90" => &mut latency.p90_us,
                "99" => &mut latency.p99_us,
                _ => continue,
            };
            *slot = duration_us(value.trim())?;
            percentiles_seen += 1;
        }
    }
    let requests_per_sec = rate.ok_or(WrkParseError::NoRate)?;
    let (requests, seconds) = total.ok_or(WrkParseError::NoTotal)?;
    if percentiles_seen < 4 {
        return Err(WrkParseError::NoLatency);
    }
    Ok(WrkResult {
        requests,
        seconds,
        requests_per_sec,
        latency,
        socket_errors,
        non_2xx_3xx,
    })
}

fn bad(value: &str) -> WrkParseError {
    WrkParseError::BadValue(value.to_owned())
}

fn number(text: &str) -> Result<f64, WrkParseError> {
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| bad(text))
}

/// wrk prints durations as `635.91us`, `1.25ms`, `2.00s`, `1.00m`, `1.00h`.
fn duration_us(text: &str) -> Result<f64, WrkParseError> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| bad(text))?;
    let (value, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return Err(bad(text)),
    };
    Ok(number(value)? * scale)
}

/// Runs `wrk -t2 -c<connections> -d<seconds>s --latency` against `url`.
pub fn run(url: &str, connections: u32, seconds: u64) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2".to_owned(),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--timeout".to_owned(),
        "2s".to_owned(),
        "--latency".to_owned(),
        url.to_owned(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut wrk = Guard::spawn("wrk", cmd, libc::SIGTERM, Duration::from_secs(2))
        .context("could not start wrk (run `cargo xtask setup`)")?;
    let limit = Duration::from_secs(seconds + 30);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = wrk.exited() {
            break status;
        }
        if interrupted() {
            bail!("interrupted");
        }
        if started.elapsed() > limit {
            bail!("wrk did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = wrk.take_output();
    if !status.success() {
        bail!("wrk failed ({status}): {}", stderr.trim());
    }
    parse(&stdout).with_context(|| format!("could not read wrk's report:\n{stdout}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 3s test @ http://127.0.0.1:18080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   439.59us  584.17us   5.59ms   91.93%
    Req/Sec    75.45k    23.13k  107.39k    33.33%
  Latency Distribution
     50%  373.00us
     75%  413.00us
     90%  735.00us
     99%    3.32ms
  450494 requests in 3.01s, 64.44MB read
Requests/sec: 149903.43
Transfer/sec:     21.44MB
";

    #[test]
    fn a_real_report() {
        let r = parse(REPORT);
        assert_eq!(
            r,
            Ok(WrkResult {
                requests: 450494,
                seconds: 3.01,
                requests_per_sec: 149903.43,
                latency: Latency {
                    p50_us: 373.0,
                    p75_us: 413.0,
                    p90_us: 735.0,
                    p99_us: 3320.0,
                },
                socket_errors: 0,
                non_2xx_3xx: 0,
            })
        );
    }

    #[test]
    fn errors_and_long_durations() {
        let report = REPORT
            .replace("99%    3.32ms", "99%    1.50s")
            .replace("in 3.01s,", "in 1.00m,")
            .replace(
                "Requests/sec",
                "  Socket errors: connect 1, read 2, write 3, timeout 4\n  \
                 Non-2xx or 3xx responses: 17\nRequests/sec",
            );
        let r = parse(&report);
        assert!(r.as_ref().is_ok_and(|r| r.latency.p99_us == 1.5e6));
        assert!(r.as_ref().is_ok_and(|r| r.seconds == 60.0));
        assert!(r.as_ref().is_ok_and(|r| r.socket_errors == 10));
        assert!(r.is_ok_and(|r| r.non_2xx_3xx == 17));
    }

    #[test]
    fn truncated_or_garbled_reports() {
        let cut = &REPORT[..REPORT.find("Requests/sec").unwrap_or(0)];
        assert_eq!(parse(cut), Err(WrkParseError::NoRate));
        let no_latency = REPORT.replace("     99%    3.32ms\n", "");
        assert_eq!(parse(&no_latency), Err(WrkParseError::NoLatency));
        let no_total = REPORT.replace("450494 requests in 3.01s, 64.44MB read", "");
        assert_eq!(parse(&no_total), Err(WrkParseError::NoTotal));
        let bad_unit = REPORT.replace("373.00us", "373.00xs");
        assert_eq!(
            parse(&bad_unit),
            Err(WrkParseError::BadValue("373.00xs".into()))
        );
        assert_eq!(parse(""), Err(WrkParseError::NoRate));
    }
}
