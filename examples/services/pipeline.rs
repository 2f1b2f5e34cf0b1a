//! Service containers, the Flipt pattern in small: build a server once, then
//! test it against three storage backends at the same time, each with a
//! fresh database of its own, reached by hostname.
//!
//! ```text
//!   build (rust image, cargo caches) ──► kv-server, kv-test
//!   sqlite:    kv-server(STORE=sqlite)                        ◄── kv-test
//!   postgres:  kv-server(STORE=postgres) ──db──► postgres:15  ◄── kv-test
//!   redis:     kv-server(STORE=redis)    ──db──► redis:7      ◄── kv-test
//! ```
//!
//! Run it from the repository root: `rbuild run examples/services/pipeline.rs`.
//! Behind a TLS-inspecting proxy, give rbuild the proxy's CA (`--ca-cert
//! FILE` or `RBUILD_CA_CERTS`, such as the host's bundle
//! `/etc/ssl/certs/ca-certificates.crt`): every step trusts it, cargo included.
//! A second run is fully cached: the test steps' keys cover the services'
//! definitions, so nothing has to run and no service starts. See README.md.

use rbuild_sdk::{self as rb, Container, DirOpts, Service};

/// The images fixtures/setup.sh builds from Debian packages.
const RUST: &str = "127.0.0.1:5000/rust:1";
const POSTGRES: &str = "127.0.0.1:5000/postgres:15";
const REDIS: &str = "127.0.0.1:5000/redis:7";

/// A throwaway database in a network namespace of its own: its password
/// guards nothing. A real credential would come from `client.secret(..)` and
/// `with_secret_variable`.
const PG_PASSWORD: &str = "kv-test-only";

#[tokio::main]
async fn main() -> rb::Result<()> {
    let app_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/services/app".to_string());
    let client = rb::connect().await?;

    // Build once: kv-server and its tests, cargo's downloads and target/ in
    // cache volumes (as in examples/rust-deps).
    let sources = client
        .host()
        .directory(&app_dir, DirOpts::default().exclude(["target/"]));
    let toolchain = client
        .container()
        .from(RUST)
        .with_workdir("/src")
        .with_mounted_cache(
            "/root/.cargo/registry",
            &client.cache_volume("services-cargo-registry"),
        )
        .with_mounted_cache("/src/target", &client.cache_volume("services-target"));
    let built = toolchain.with_directory("/src", &sources).with_exec([
        "sh",
        "-c",
        "cargo build --release --locked 2>&1 && \
         install target/release/kv-server target/release/kv-test /usr/local/bin/",
    ]);

    // The binaries alone, in a clean image: no cache mounts, and a rebuild
    // that produces the same bytes leaves everything below cached.
    let runtime = client.container().from(RUST);
    let server = runtime
        .with_file(
            "/usr/local/bin/kv-server",
            built.file("/usr/local/bin/kv-server"),
        )
        .with_exposed_port(8080);
    let tester = runtime.with_file(
        "/usr/local/bin/kv-test",
        built.file("/usr/local/bin/kv-test"),
    );

    let postgres = client
        .container()
        .from(POSTGRES)
        .with_env_variable("POSTGRES_USER", "kv")
        .with_env_variable("POSTGRES_PASSWORD", PG_PASSWORD)
        .with_env_variable("POSTGRES_DB", "kv")
        .with_exposed_port(5432)
        .as_service();
    let redis = client
        .container()
        .from(REDIS)
        .with_exposed_port(6379)
        .as_service();

    let backends: [(&str, Option<(&Service, String)>); 3] = [
        ("sqlite", None),
        (
            "postgres",
            Some((&postgres, format!("postgres://kv:{PG_PASSWORD}@db:5432/kv"))),
        ),
        ("redis", Some((&redis, "redis://db:6379/".to_string()))),
    ];
    let entries = backends
        .into_iter()
        .map(|(store, db)| test_backend(&server, &tester, store, db));
    let results = futures_join_all(entries).await;

    let mut failed = Vec::new();
    for (store, result) in results {
        match result {
            Ok(report) => {
                for line in report.lines() {
                    println!("{store:<8} | {line}");
                }
            }
            Err(e) => {
                println!("{store:<8} | FAILED: {e}");
                failed.push(store);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        eprintln!("backends failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// One matrix entry: the server bound to its database (if it has one), as a
/// service; the tests bound to the server, by hostname.
fn test_backend(
    server: &Container,
    tester: &Container,
    store: &'static str,
    db: Option<(&Service, String)>,
) -> impl std::future::Future<Output = (&'static str, rb::Result<String>)> + Send + 'static {
    let mut server = server.with_env_variable("STORE", store);
    if let Some((service, url)) = db {
        server = server
            .with_service_binding("db", service)
            .with_env_variable("DATABASE_URL", url);
    }
    let app = server.with_default_args(["kv-server"]).as_service();
    let run = tester
        .with_service_binding("app", &app)
        .with_env_variable("BASE_URL", "http://app:8080")
        .with_env_variable("EXPECT_STORE", store)
        .with_exec(["kv-test"])
        .stdout();
    async move { (store, run.await) }
}

/// All futures at once (tokio::join! for a list), results in order.
async fn futures_join_all<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("a matrix entry panicked"));
    }
    out
}
