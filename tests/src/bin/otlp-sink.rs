//! A trace sink for benchmarks: accepts OTLP over gRPC and HTTP, counts spans and serves the
//! count as plain text on `GET /count` at the HTTP address.
//!
//! Usage: `otlp-sink [--grpc-addr 127.0.0.1:4317] [--http-addr 127.0.0.1:4318]`
//! Prints `grpc=ADDR http=ADDR` once listening (useful with port 0), then runs until killed.

use std::{io::Write as _, net::SocketAddr, process::ExitCode};

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceiverOptions};

const USAGE: &str = "usage: otlp-sink [--grpc-addr ADDR] [--http-addr ADDR]";

#[derive(Debug, thiserror::Error)]
enum ArgsError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("{flag}: {value:?} is not a socket address (like 127.0.0.1:4317)")]
    BadAddress { flag: String, value: String },
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<ReceiverOptions>, ArgsError> {
    let mut options = ReceiverOptions {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 4317)),
        http_addr: SocketAddr::from(([127, 0, 0, 1], 4318)),
        keep_requests: false,
        worker_threads: 2,
        tls: None,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "--grpc-addr" => &mut options.grpc_addr,
            "--http-addr" => &mut options.http_addr,
            "-h" | "--help" => return Ok(None),
            _ => return Err(ArgsError::Unknown(arg)),
        };
        let value = match inline.or_else(|| args.next()) {
            Some(value) => value,
            None => return Err(ArgsError::MissingValue(flag)),
        };
        *slot = value
            .parse()
            .map_err(|_| ArgsError::BadAddress { flag, value })?;
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("otlp-sink: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let receiver = match OtlpReceiver::start_with(options) {
        Ok(receiver) => receiver,
        Err(e) => {
            eprintln!("otlp-sink: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "grpc={} http={}",
        receiver.grpc_addr(),
        receiver.http_addr()
    );
    let _ = std::io::stdout().flush();
    // The servers run on the receiver's own threads; this one only keeps them alive.
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<ReceiverOptions>, ArgsError> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn defaults_and_both_flag_forms() {
        let options = parse(&[]).unwrap().unwrap();
        assert_eq!(options.grpc_addr.port(), 4317);
        assert_eq!(options.http_addr.port(), 4318);
        assert!(!options.keep_requests);
        let options = parse(&["--grpc-addr", "0.0.0.0:1", "--http-addr=127.0.0.1:0"])
            .unwrap()
            .unwrap();
        assert_eq!(options.grpc_addr, "0.0.0.0:1".parse().unwrap());
        assert_eq!(options.http_addr, "127.0.0.1:0".parse().unwrap());
    }

    #[test]
    fn bad_arguments() {
        assert!(matches!(
            parse(&["--grpc-addr"]),
            Err(ArgsError::MissingValue(_))
        ));
        assert!(matches!(
            parse(&["--http-addr", "localhost"]),
            Err(ArgsError::BadAddress { .. })
        ));
        assert!(matches!(parse(&["--verbose"]), Err(ArgsError::Unknown(_))));
        assert!(parse(&["--help"]).unwrap().is_none());
    }
}
