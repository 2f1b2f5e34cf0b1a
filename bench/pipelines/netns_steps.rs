//! Bench "netns": ten trivial steps, each on the previous one's result (as
//! ten_steps.rs), on the host network or, with `BENCH_NETWORK=netns`, each
//! in a network namespace of its own: the container binds a host service
//! (the local registry's port), which is what puts a step in its own
//! namespace in this API version. The last step prints its network
//! namespace, so that bench/run.sh checks which one the steps had.
//! `BENCH_NONCE` makes all ten steps miss (as in ten_steps.rs);
//! `BENCH_STEPS` sets how many (default 10).

use rbuild_sdk as rb;

const IMAGE: &str = "127.0.0.1:5000/busybox:latest";

#[tokio::main]
async fn main() -> rb::Result<()> {
    let nonce = std::env::var("BENCH_NONCE").unwrap_or_default();
    let own_netns = std::env::var("BENCH_NETWORK").as_deref() == Ok("netns");
    let steps: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let client = rb::connect().await?;

    let mut container = client.container().from(IMAGE);
    if own_netns {
        let registry = client.host().service(&[rb::PortForward {
            frontend: None,
            backend: 5000,
        }]);
        container = container.with_service_binding("registry", &registry);
    }
    for n in 1..=steps {
        let cmd = if n == 1 {
            format!("echo step {n} {nonce} > /nonce")
        } else if n == steps {
            format!("echo step {n}; readlink /proc/self/ns/net")
        } else {
            format!("echo step {n}")
        };
        container = container.with_exec(["sh", "-c", cmd.as_str()]);
    }
    print!("{}", container.stdout().await?);
    Ok(())
}
