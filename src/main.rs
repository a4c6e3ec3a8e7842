//! The `whet` binary: argument parsing and logging set-up; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use whet::cli;
use whet::generate::Sampling;

#[derive(Parser)]
#[command(name = "whet", version, about = "A terminal workbench for training language models")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Extra model paths (HF directories or .gguf files) to list in the workbench.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// A run config to open in the workbench's form.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    cpu: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the most likely next tokens after a prompt.
    Probe {
        /// An HF model directory or a .gguf file (default: the embedded SmolLM2-135M-Instruct).
        #[arg(long)]
        model: Option<PathBuf>,
        /// A PEFT LoRA adapter directory to apply.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, default_value = "How are")]
        prompt: String,
        /// Wrap the prompt as a user message in the model's chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Print one JSON object (see README).
        #[arg(long)]
        json: bool,
        /// Run on the CPU even when a GPU is available.
        #[arg(long)]
        cpu: bool,
    },
    /// Per-token negative log-likelihood and perplexity of a text.
    Score {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        text: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cpu: bool,
    },
    /// Continue a prompt, streaming the text.
    Generate {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        #[arg(long, default_value_t = 0.9)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        cpu: bool,
    },
    /// Fold a PEFT LoRA adapter into its base model and write an HF directory.
    Merge {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Train headless from a TOML config (see configs/).
    Train {
        config: PathBuf,
        /// Override a config key, e.g. `--set optim.max_steps=100`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Continue the run in this directory from its newest checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        #[arg(long)]
        cpu: bool,
    },
    /// Benchmarks (see scripts/bench/).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time a forward pass and greedy generation; prints one JSON line.
    Forward {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        #[arg(long, default_value_t = 32)]
        gen_tokens: usize,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long)]
        cpu: bool,
    },
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        None => whet::tui::run(whet::tui::Options {
            models: args.models,
            config: args.config,
            device: cli::device(args.cpu)?,
        }),
        Some(Cmd::Probe { model, adapter, prompt, chat, top_k, temperature, json, cpu }) => {
            let model = cli::resolve_model(model)?;
            cli::probe(cli::ProbeArgs { model, adapter, prompt, chat, top_k, temperature, json, cpu })
        }
        Some(Cmd::Score { model, adapter, text, file, json, cpu }) => {
            let model = cli::resolve_model(model)?;
            let text = match (text, file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", f.display()))?,
                (None, None) => anyhow::bail!("give --text or --file"),
            };
            cli::score(&model, adapter.as_deref(), &text, json, cpu)
        }
        Some(Cmd::Generate { model, adapter, prompt, chat, max_tokens, temperature, top_p, seed, cpu }) => {
            let model = cli::resolve_model(model)?;
            let sampling = Sampling { temperature, top_p, seed, ignore_eos: false };
            cli::generate(cli::GenerateArgs { model, adapter, prompt, chat, max_tokens, sampling, cpu })
        }
        Some(Cmd::Merge { model, adapter, out }) => cli::merge(&cli::resolve_model(model)?, &adapter, &out),
        Some(Cmd::Train { config, sets, resume, cpu }) => {
            whet::train_cli::train(&config, &sets, resume.as_deref(), cli::device(cpu)?)
        }
        Some(Cmd::Bench { what: BenchCmd::Forward { model, tokens, gen_tokens, reps, cpu } }) => {
            cli::bench_forward(&cli::resolve_model(model)?, tokens, gen_tokens, reps, cpu)
        }
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

fn main() -> ExitCode {
    let args = Args::parse();
    // A training run logs into its own directory.
    if let Some(Cmd::Train { config, sets, resume, .. }) = &args.cmd {
        if let Ok(cfg) = whet::train_cli::read_config(config, sets) {
            let dir = whet::train_cli::run_dir(&cfg, resume.as_deref());
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
