//! The `whet` binary: argument parsing and logging set-up; the work is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use whet::{cli, train_cli};

#[derive(Parser)]
#[command(name = "whet", version = cli::VERSION, about = "A terminal workbench for training language models")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Extra model paths (HF directories or .gguf files) to list in the workbench.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// A run config to open in the workbench's form.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    device: cli::DeviceArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the most likely next tokens after a prompt.
    Probe(cli::ProbeArgs),
    /// Per-token negative log-likelihood and perplexity of a text.
    Score(cli::ScoreArgs),
    /// Continue a prompt, streaming the text.
    Generate(cli::GenerateArgs),
    /// Fold a PEFT LoRA adapter into its base model and write an HF directory.
    Merge(cli::MergeArgs),
    /// Every run this user started here: status (running, finished, stopped, stale), step, loss, ETA.
    Runs,
    /// Export a run or a model: merged HF directory, PEFT adapter, or GGUF (llama.cpp, Ollama).
    Export(whet::export::ExportArgs),
    /// The training data as the run will see it: each sample through the chat template with
    /// the tokens that carry loss marked, and stats (samples, tokens, truncated, dropped).
    Data(whet::data_cli::DataArgs),
    /// Train headless from a TOML config (see configs/); `--detach` leaves it running in
    /// its own process.
    Train(train_cli::TrainArgs),
    /// Open the workbench on a run training in its own process (the newest running one
    /// when no directory is given; `whet runs` lists them).
    Attach { run_dir: Option<PathBuf> },
    /// The engine host of a detached run (started by whet itself; the run comes on stdin).
    #[command(hide = true)]
    Host,
    /// Benchmarks (see scripts/bench/).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time a forward pass and greedy generation; prints one JSON line.
    Forward(whet::bench::BenchForwardArgs),
    /// Check and time the fused kernels on a device against the composed ops; one JSON line
    /// per op, and a failure if any is off.
    Kernels(whet::bench::BenchKernelsArgs),
    /// Time candle's matmul on the shapes of a SmolLM2-135M training step; one JSON line per
    /// shape (scripts/bench/matmul.sh sets PyTorch's BLAS beside it).
    Matmul(whet::bench::BenchMatmulArgs),
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        None => whet::tui::run(whet::tui::Options {
            models: args.models,
            config: args.config,
            device: args.device.resolve()?,
            attach: None,
        }),
        Some(Cmd::Attach { run_dir }) => whet::tui::run(whet::tui::Options {
            models: args.models,
            config: args.config,
            device: args.device.resolve()?,
            attach: Some(cli::attach_target(run_dir)?),
        }),
        Some(Cmd::Host) => whet::engine::host::main(),
        Some(Cmd::Probe(a)) => cli::probe(a),
        Some(Cmd::Score(a)) => cli::score(a),
        Some(Cmd::Generate(a)) => cli::generate(a),
        Some(Cmd::Merge(a)) => cli::merge(a),
        Some(Cmd::Export(a)) => whet::export::export(a),
        Some(Cmd::Runs) => cli::runs(),
        Some(Cmd::Train(a)) => train_cli::train(&a),
        Some(Cmd::Data(a)) => whet::data_cli::data(&a),
        Some(Cmd::Bench { what: BenchCmd::Forward(a) }) => whet::bench::bench_forward(a),
        Some(Cmd::Bench { what: BenchCmd::Kernels(a) }) => whet::bench::bench_kernels(a),
        Some(Cmd::Bench { what: BenchCmd::Matmul(a) }) => whet::bench::bench_matmul(a),
    }
}

/// Logs go to a file: stdout belongs to the TUI and to `--json` output.
fn init_logging() {
    let dir = std::env::var_os("WHET_LOG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("whet")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/whet")));
    let Some(dir) = dir else { return };
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("whet.log")) else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}

/// candle runs its own elementwise ops (residual adds, gradient sums) on a thread pool beside
/// rayon's, and its workers spin for 25 000 rounds after each op before they park. Between the
/// matmuls of a training step those spinning workers take cores from gemm's rayon threads.
/// With `CANDLE_NUM_THREADS=1` those ops run on the calling thread and nothing spins: on 2
/// cores, LoRA on the default model went from 159–163 to 188–200 tok/s and pretraining from
/// 2400–2860 to 2990–3170 (scripts/bench/README.md, fifth round). whet's own kernels still
/// run on rayon. Set before any thread starts; a value the user set is kept.
fn single_candle_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Keeps freed memory in one malloc heap for reuse. By default glibc gives each thread that
/// allocates an arena of its own and returns freed pages to the kernel, so every step got its
/// buffers as fresh pages that the kernel zeroes again: 216k page faults per full fine-tuning
/// step on the default model, 55k with one arena that is never trimmed (scripts/bench/README.md,
/// sixth round). Buffers of 32 MiB and more are still mapped and unmapped each time. Skipped
/// when the user tunes malloc with `GLIBC_TUNABLES`.
fn steady_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc")) {
        // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

fn main() -> ExitCode {
    steady_malloc();
    single_candle_pool();
    let args = Args::parse();
    // A training run logs into its own directory.
    if let Some(Cmd::Train(a)) = &args.cmd {
        if let Ok(cfg) = train_cli::read_config(&a.config, &a.sets) {
            let dir = train_cli::run_dir(&cfg, a.resume.as_deref());
            if std::fs::create_dir_all(&dir).is_ok() {
                std::env::set_var("WHET_LOG_DIR", &dir);
            }
        }
    }
    init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            // Best effort: stderr may be closed too.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
