//! `loupe config check` as a user runs it: the built binary, no privileges.

use std::{path::PathBuf, process::Command};

fn loupe() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loupe"));
    // The check reads OTEL_* variables; the test's own environment must not leak in.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/loupe.yaml")
}

#[test]
fn the_example_file_checks_and_prints_the_effective_configuration() {
    let output = loupe()
        .args(["config", "check"])
        .arg(example())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20secret",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for line in [
        "capture_bytes: 1024",
        "admin_addr: 127.0.0.1:9464",
        "  exporter: otlp",
        "    endpoint: http://collector:4317/",
        "    protocol: grpc",
        "      authorization: <redacted>",
        "    max_queue_size: 2048",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("secret"), "{stdout}");
}

#[test]
fn an_unknown_key_fails_with_its_name_and_line() {
    let path = std::env::temp_dir().join(format!("loupe-check-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "capture_bytes: 2048\nexport:\n  endpiont: http://x:4318\n",
    )
    .unwrap();
    let output = loupe()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(stderr.starts_with("loupe: error: "), "{stderr}");
    assert!(
        stderr.contains("export: unknown field `endpiont`"),
        "{stderr}"
    );
    assert!(stderr.contains("at line 3 column 3"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn flags_and_the_subcommand_do_not_mix() {
    let output = loupe()
        .args(["--exe", "curl", "config", "check"])
        .arg(example())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot be used with"));
}

#[test]
fn help_explains_the_configuration_file() {
    let output = loupe().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(help.contains("--config <FILE>"), "{help}");
    assert!(help.contains("loupe config check FILE"), "{help}");
    assert!(help.contains("--capture-bytes"), "{help}");
}
