//! loupe on an older kernel than the host's: Debian 12's Linux 6.1, booted under QEMU's
//! software emulation from an initramfs holding loupe, nginx and busybox. An older verifier
//! refuses programs a newer one accepts, so only loading them there shows they load.
//! `cargo xtask test` fetches the kernel (see xtask's `test_kernel`); `LOUPE_TEST_KERNEL`
//! names another.
// Elsewhere only the console parser's test runs.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

mod support;

use std::{
    fs,
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{loupe_bin, scratch_dir};

/// Booting and two runs of loupe take about half a minute under emulation on an idle
/// machine; a loaded one may take several times longer.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// Requests of wget per run of loupe, as `INIT` makes them.
const REQUESTS: usize = 10;

/// Where `cargo xtask test` puts the kernel when `LOUPE_TEST_KERNEL` is not set.
fn test_kernel() -> PathBuf {
    let path = std::env::var_os("LOUPE_TEST_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-kernel/vmlinuz")
        });
    assert!(
        path.exists(),
        "no test kernel at {}: `cargo xtask test` downloads Debian 12's there, or set \
         LOUPE_TEST_KERNEL to a bzImage",
        path.display()
    );
    path
}

/// Runs in the guest as its first process: nginx, then loupe once per way of hooking
/// reads and writes, each tracing [`REQUESTS`] requests of busybox's wget to nginx one
/// after another, and once with `--inject-traceparent`, which this kernel cannot have.
/// Several requests, because under emulation a wget preempted inside its write had its
/// request record reach loupe after nginx had answered and closed, about one request in
/// thirty, and its server span then went out alone.
const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
echo "guest kernel $(cat /proc/sys/kernel/osrelease)"
nginx -c /etc/nginx.conf
# run NAME ARGS...: starts loupe with ARGS, waits until it is ready or has exited, has
# wget fetch /hello-NAME-1 to /hello-NAME-10 from nginx, stops loupe and prints what it
# said.
run() {
  name=$1; shift
  echo "=== mode $name"
  # Emptied here: the background shell may open them only after the wait below starts,
  # which would otherwise read the previous run's "admin on".
  : >/tmp/out; : >/tmp/err
  OTEL_TRACES_EXPORTER=console OTEL_BSP_SCHEDULE_DELAY=100 loupe "$@" >/tmp/out 2>/tmp/err &
  pid=$!
  i=0
  while [ $i -lt 600 ] && kill -0 $pid 2>/dev/null && ! grep -q "admin on" /tmp/err; do
    sleep 0.2; i=$((i + 1))
  done
  for n in 1 2 3 4 5 6 7 8 9 10; do
    wget -q -O /tmp/body "http://127.0.0.1:8080/hello-$name-$n" && echo "wget got: $(cat /tmp/body)"
  done
  sleep 2
  kill -TERM $pid 2>/dev/null
  wait $pid
  echo "loupe exited with $?"
  echo "--- stderr"; cat /tmp/err
  echo "--- stdout"; cat /tmp/out
  echo "=== end"
}
traced="--exe nginx --exe busybox --port 8080"
run exit $traced --data-probes exit
run entry $traced --data-probes entry
run inject $traced --inject-traceparent
poweroff -f
"#;

const NGINX_CONF: &str = r#"worker_processes 1;
user root;
pid /tmp/nginx.pid;
error_log /tmp/nginx-error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path /tmp;
    proxy_temp_path /tmp;
    fastcgi_temp_path /tmp;
    uwsgi_temp_path /tmp;
    scgi_temp_path /tmp;
    server {
        listen 127.0.0.1:8080;
        location / { return 200 "nginx in the guest\n"; }
    }
}
"#;

/// Copies `binary` into `root` at the same path, with the shared libraries `ldd` names.
fn install(root: &Path, binary: &Path, at: &str) {
    copy_into(root, binary, at);
    let ldd = Command::new("ldd").arg(binary).output().expect("run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; a static binary has neither.
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(path) = path {
            copy_into(root, Path::new(path), path);
        }
    }
}

fn copy_into(root: &Path, from: &Path, at: &str) {
    let to = root.join(at.trim_start_matches('/'));
    fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir in the initramfs");
    fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), at));
}

fn nginx_path() -> &'static Path {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("nginx (`cargo xtask setup` installs nginx-light)")
}

/// A statically linked busybox: the guest's shell and tools, and its HTTP client.
fn busybox_path() -> &'static Path {
    let path = Path::new("/bin/busybox");
    assert!(
        path.exists(),
        "no /bin/busybox (`cargo xtask setup` installs busybox-static)"
    );
    path
}

/// Builds the guest's initramfs (an uncompressed newc cpio archive) in `dir`.
fn initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    install(&root, busybox_path(), "/bin/busybox");
    for applet in [
        "sh", "mount", "ip", "cat", "echo", "sleep", "grep", "kill", "wget", "poweroff",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    install(&root, &loupe_bin(), "/bin/loupe");
    install(&root, nginx_path(), "/bin/nginx");
    for dir in ["proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    fs::write(root.join("etc/nginx.conf"), NGINX_CONF).expect("nginx.conf");
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    let init = root.join("init");
    fs::write(&init, INIT).expect("init");
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).expect("chmod init");
    let archive = dir.join("initramfs.cpio");
    let packed = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet > \"$0\"")
        .arg(&archive)
        .current_dir(&root)
        .status()
        .expect("run cpio");
    assert!(packed.success(), "cpio failed");
    archive
}

/// Boots `kernel` with `initramfs` and returns what the guest printed on its serial
/// console.
fn boot(kernel: &Path, initramfs: &Path, log: &Path) -> String {
    let out = fs::File::create(log).expect("console log");
    let mut guest = Command::new("qemu-system-x86_64")
        // One host thread runs both vCPUs. With a thread each, a vCPU could keep running
        // its stale translation of a jump label the other had just patched: the guest's
        // kernel then met an int3 that memory no longer held, retried it forever, and both
        // vCPUs soft-locked when loupe's exit switched the syscall tracepoints off (2 boots
        // in 157 on QEMU 7.2). Real CPUs serialise on the kernel's sync-core IPI.
        .args(["-accel", "tcg,thread=single"])
        .args(["-cpu", "max", "-smp", "2", "-m", "1024"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            // Warnings reach the console, and a soft lockup shows every CPU's stack.
            "console=ttyS0 quiet loglevel=5 panic=-1 softlockup_all_cpu_backtrace=1",
            "-nographic",
            "-no-reboot",
        ])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .spawn()
        .expect("start qemu-system-x86_64 (`cargo xtask setup` installs qemu-system-x86)");
    let started = Instant::now();
    while guest.try_wait().expect("wait for qemu").is_none() {
        if started.elapsed() > BOOT_LIMIT {
            let _ = guest.kill();
            let _ = guest.wait();
            panic!(
                "the guest did not power off within {BOOT_LIMIT:?}; its console:\n{}",
                read(log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    read(log)
}

fn read(path: &Path) -> String {
    let mut bytes = Vec::new();
    let _ = fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes));
    String::from_utf8_lossy(&bytes).replace('\r', "")
}

/// The part of the console between `=== mode MODE` and the next `=== end`.
fn section<'a>(console: &'a str, mode: &str) -> &'a str {
    let start = format!("=== mode {mode}\n");
    let from = console
        .find(&start)
        .unwrap_or_else(|| panic!("no run with --data-probes {mode}; console:\n{console}"));
    let rest = &console[from + start.len()..];
    &rest[..rest.find("=== end").unwrap_or(rest.len())]
}

/// Whether the console exporter's trace trees hold wget's request to nginx with nginx's
/// server span under it: `  wget  client  GET /P  [OK 200]` and, on the next line,
/// `    nginx  server  GET /P  [OK 200]`. busybox run as `wget` comes out named by its
/// command or by its executable (both were seen), which this test leaves alone.
fn has_linked_pair(output: &str, path: &str) -> bool {
    let lines: Vec<&str> = output.lines().collect();
    let is = |line: &str, indent: usize, services: &[&str], kind: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        line.len() - line.trim_start().len() == indent
            && words.len() >= 6
            && services.contains(&words[0])
            && words[1] == kind
            && words[2] == "GET"
            && words[3] == path
            && words[4] == "[OK"
            && words[5] == "200]"
    };
    lines
        .windows(2)
        .any(|w| is(w[0], 2, &["wget", "busybox"], "client") && is(w[1], 4, &["nginx"], "server"))
}

// The guest is x86_64 and runs the host's binaries.
#[cfg(target_arch = "x86_64")]
#[test]
fn loads_and_traces_on_debian_12s_linux_6_1() {
    let kernel = test_kernel();
    let dir = scratch_dir("older-kernel");
    let archive = initramfs(&dir);
    let console = boot(&kernel, &archive, &dir.join("console.log"));
    assert!(
        console.contains("guest kernel 6.1."),
        "the guest runs Linux 6.1; console:\n{console}"
    );
    for (mode, hooked) in [
        (
            "exit",
            "reads hooked at their return, writes at their return",
        ),
        (
            "entry",
            "reads hooked at entry and return, writes at entry and return",
        ),
    ] {
        let run = section(&console, mode);
        assert!(
            run.contains(hooked) && run.contains("loupe exited with 0"),
            "--data-probes {mode}: loupe loaded, ran and exited cleanly; its run:\n{run}"
        );
        assert_eq!(
            run.matches("wget got: nginx in the guest").count(),
            REQUESTS,
            "the guest's requests were served; its run:\n{run}"
        );
        for n in 1..=REQUESTS {
            assert!(
                has_linked_pair(run, &format!("/hello-{mode}-{n}")),
                "--data-probes {mode}: wget's client span of request {n} with nginx's \
                 server span under it; its run:\n{run}"
            );
        }
    }
    // Linux 6.1 gives sock_ops programs no current task: the flag is refused in one line.
    let run = section(&console, "inject");
    assert!(
        run.contains("this kernel does not let sock_ops programs ask which process")
            && !run.contains("loupe exited with 0"),
        "--inject-traceparent refused with its own message; its run:\n{run}"
    );
}

#[test]
fn the_console_format_is_read_as_written() {
    let output = "trace 4a9c\n  wget  client  GET /hello-exit  [OK 200]  19.0 ms\n    \
                  nginx  server  GET /hello-exit  [OK 200]  2.4 ms\n";
    assert!(has_linked_pair(output, "/hello-exit"));
    assert!(!has_linked_pair(output, "/hello-entry"));
    let unlinked = "trace 1\n  wget  client  GET /x  [OK 200]  1 ms\ntrace 2\n  nginx  \
                    server  GET /x  [OK 200]  1 ms\n";
    assert!(!has_linked_pair(unlinked, "/x"));
}
