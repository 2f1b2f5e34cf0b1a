//! Command-line definitions (clap). No logic here: each subcommand is
//! handled by a short function in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The command line of this process (exits with clap's message on a bad one).
pub fn parse() -> Cli {
    Cli::parse()
}

#[derive(Parser, Debug)]
#[command(
    name = "rbuild",
    version,
    about = "Pipelines as Rust code, every step in a container on containerd, cached by content."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalOpts {
    /// State root: the cache index and rbuild's working files.
    #[arg(
        long,
        global = true,
        env = "RBUILD_ROOT",
        default_value = "/var/lib/rbuild"
    )]
    pub root: PathBuf,
    /// Where compiled pipelines and their cargo target directory live [default: ROOT/cache].
    #[arg(long, global = true, env = "RBUILD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// containerd's gRPC socket.
    #[arg(
        long,
        global = true,
        env = "RBUILD_CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub address: PathBuf,
    /// containerd namespace for rbuild's images, snapshots and containers.
    #[arg(
        long,
        global = true,
        env = "RBUILD_NAMESPACE",
        default_value = "rbuild"
    )]
    pub namespace: String,
    /// How many steps may run at once [default: 4 per CPU, at least 8: steps
    /// often wait (on the network, on sleeps, on services) rather than compute].
    #[arg(long, short = 'j', global = true, env = "RBUILD_JOBS")]
    pub jobs: Option<usize>,
    /// How progress is shown: a live view on a terminal (tty), one line per
    /// event (plain, for CI logs), or one JSON object per event.
    #[arg(
        long,
        global = true,
        env = "RBUILD_PROGRESS",
        value_enum,
        default_value = "auto"
    )]
    pub progress: ProgressMode,
    /// A registry (host:port) to speak plain HTTP to; loopback registries always are.
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "RBUILD_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// A CA certificate (PEM) to add to every step's trust store, for a
    /// TLS-inspecting proxy or a corporate CA; repeatable. Not the host's
    /// bundle unless named (its path: /etc/ssl/certs/ca-certificates.crt).
    #[arg(
        long = "ca-cert",
        global = true,
        env = "RBUILD_CA_CERTS",
        value_delimiter = ','
    )]
    pub ca_certs: Vec<PathBuf>,
    /// Refuse a run whose rbuild.lock is missing or does not pin an image
    /// tag the pipeline uses (for CI).
    #[arg(long, global = true, env = "RBUILD_LOCKED")]
    pub locked: bool,
    /// Look steps up in this remote cache repository (any OCI registry,
    /// e.g. registry.example.com/team/rbuild-cache) when the local cache
    /// misses; read-only; repeatable. See README: the remote cache.
    #[arg(
        long = "cache-from",
        global = true,
        env = "RBUILD_CACHE_FROM",
        value_delimiter = ','
    )]
    pub cache_from: Vec<String>,
    /// Push the steps this run executes to this remote cache repository
    /// (in the background; a failed push is a warning), and look steps up
    /// in it too.
    #[arg(long = "cache-to", global = true, env = "RBUILD_CACHE_TO")]
    pub cache_to: Option<String>,
    /// Fail, naming the step, rather than run any step: every step must
    /// come from the cache (local or remote). A CI check that a warm
    /// runner really is warm.
    #[arg(long, global = true, env = "RBUILD_EXPECT_CACHED")]
    pub expect_cached: bool,
}

/// `--progress`'s values (the engine's own is `progress::Mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// `tty` on a terminal, `plain` otherwise.
    Auto,
    Tty,
    Plain,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build and run a pipeline: a .rs file, or a directory with a Cargo.toml.
    Run {
        /// The pipeline.
        path: PathBuf,
        /// When a step fails, open a shell in its container (its files,
        /// environment and mounts as the step left them) before stopping.
        #[arg(short, long)]
        interactive: bool,
        /// The shell `-i` opens (split on spaces).
        #[arg(long, default_value = "/bin/sh", requires = "interactive")]
        interactive_command: String,
        /// Arguments passed to the pipeline (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// List the functions a pipeline exposes, with their arguments.
    Functions {
        /// The pipeline [default: ci/pipeline.rs, else ci/, else pipeline.rs].
        path: Option<PathBuf>,
    },
    /// Call a pipeline function:
    /// `rbuild call [PATH] FN [--arg value]... [print | export --path P | publish --address A | terminal | up --ports HOST:SERVICE]`
    #[command(disable_help_flag = true)]
    Call {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
        words: Vec<String>,
    },
    /// Inspect and prune the build cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// rbuild.lock, the image digests a pipeline's tags are pinned to.
    Lock {
        #[command(subcommand)]
        command: LockCommand,
    },
    /// Recent runs: when, how long, steps run and cached.
    History {
        /// How many runs to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// Why steps ran: a run's missed steps with their reasons, or one
    /// step's key compared part by part with the step it replaced.
    Explain {
        /// A run id from `rbuild history` [default: last].
        run: Option<String>,
        /// A step's number in that run (`3` or `#3`), or words of its name.
        step: Option<String>,
    },
    /// Write a run as one self-contained HTML page: a timeline of its
    /// steps, its critical path, where the time went, totals.
    Report {
        /// A run id from `rbuild history` [default: last].
        run: Option<String>,
        /// Where to write the page.
        #[arg(short = 'o', long = "output", default_value = "rbuild-report.html")]
        output: PathBuf,
    },
    /// The containerd rbuild uses: status, or start/stop rbuild's own.
    Engine {
        #[command(subcommand)]
        command: EngineCommand,
    },
    /// Check what rbuild needs: containerd, runc, overlayfs, cgroups, disk, registries.
    Doctor {
        /// Also check that this registry (host:port) answers; repeatable.
        #[arg(long = "registry")]
        registries: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Create a starter pipeline (ci/pipeline.rs) in a directory.
    Init {
        /// Where [default: the current directory].
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Cache entries, most recently used first: size, age, last use, what made them.
    Ls,
    /// Disk usage of the cache: steps, volumes, compiled pipelines.
    Du,
    /// Remove cache entries (and their snapshots and content).
    Prune {
        /// Keep the most recently used entries that fit in this size (10GB, 512MiB).
        #[arg(long)]
        keep_storage: Option<String>,
        /// Keep entries used within this long (2h, 7d).
        #[arg(long)]
        keep_duration: Option<String>,
        /// Remove everything: entries, rbuild's images and unused cache volumes.
        #[arg(long)]
        all: bool,
        /// Prune this remote cache repository instead (with
        /// --keep-duration: its entries pushed longer ago go).
        #[arg(long, requires = "keep_duration", conflicts_with_all = ["keep_storage", "all"])]
        remote: Option<String>,
    },
    /// Check the cache's invariants and what killed runs left; exits 1 naming each problem.
    Verify,
    /// Cache volumes: size and last use (`rm NAME` removes one).
    Volumes {
        #[command(subcommand)]
        command: Option<VolumesCommand>,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumesCommand {
    /// Remove a cache volume (unless a running step holds it).
    Rm {
        /// The volume's name, as the pipeline gave it.
        name: String,
    },
    /// Push a cache volume to a remote cache repository (e.g. after a CI
    /// job on the branch that writes the cache).
    Push {
        /// The volume's name, as the pipeline gave it.
        name: String,
        /// The repository (the one --cache-to names).
        repo: String,
    },
    /// Replace a cache volume with its copy in a remote cache repository
    /// (e.g. before a CI job on a fresh runner); none there leaves it as it is.
    Pull { name: String, repo: String },
}

#[derive(Subcommand, Debug)]
pub enum LockCommand {
    /// Resolve every pinned tag again and rewrite the lock (or write an
    /// empty one: the next run records the tags it uses).
    Update {
        /// The pipeline [default: ci/pipeline.rs, else ci/, else pipeline.rs].
        path: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum EngineCommand {
    /// Which containerd rbuild uses, and whether rbuild's own runs.
    Status,
    /// Start rbuild's own containerd (when no other answers).
    Start,
    /// Stop rbuild's own containerd.
    Stop,
}
