//! Bench "services", service start to ready: a busybox httpd service (its
//! shell records when it started, /proc/uptime: busybox's date has no %N,
//! so 10 ms resolution, in the file it serves, then execs
//! httpd) and one consumer bound to it, which fetches that file and prints
//! `ready_ms=` its clock minus the service's start: the time from the
//! service's start to the first successful request, on one host clock.
//! BENCH_NONCE makes every run a cold one (a new service definition).

use rbuild_sdk as rb;

#[tokio::main]
async fn main() -> rb::Result<()> {
    let nonce = std::env::var("BENCH_NONCE").unwrap_or_default();
    let client = rb::connect().await?;
    let busybox = client.container().from("127.0.0.1:5000/busybox:latest");
    let web = busybox
        .with_env_variable("BENCH_NONCE", &nonce)
        .with_exposed_port(8080)
        .with_default_args([
            "sh",
            "-c",
            "mkdir -p /www && cut -d' ' -f1 /proc/uptime >/www/start && exec httpd -f -p 8080 -h /www",
        ])
        .as_service();
    let out = busybox
        .with_env_variable("BENCH_NONCE", &nonce)
        .with_service_binding("web", &web)
        .with_exec([
            "sh",
            "-c",
            "until t=$(wget -q -O - http://web:8080/start); do :; done; \
             now=$(cut -d' ' -f1 /proc/uptime); \
             echo ready_ms=$(( (${now%.*}${now#*.} - ${t%.*}${t#*.}) * 10 ))",
        ])
        .stdout()
        .await?;
    print!("{out}");
    Ok(())
}
