//! The `rollcall` command line: serve, migrate, manage API keys, evaluate accuracy.

use std::io::IsTerminal;
use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rollcall_models::pipeline::PipelineConfig;
use rollcall_server::app;
use rollcall_server::auth::{create_key, Scope};
use rollcall_server::config::{CommonSettings, DetectorArg, ServeSettings};
use rollcall_server::eval;
use rollcall_server::session::hash_password;
use rollcall_server::store::Store;

/// Rollcall: face-recognition attendance.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonSettings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(ServeSettings),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    ApiKey(KeyCommand),
    /// Manage dashboard administrators.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Measure recognition accuracy on a folder DIR/<person>/<image> (DIR/_unknown/ holds strangers).
    Eval {
        /// The folder of identities.
        dir: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Match threshold (cosine similarity).
        #[arg(long, env = "ROLLCALL_MATCH_THRESHOLD", default_value_t = rollcall_server::DEFAULT_MATCH_THRESHOLD)]
        threshold: f32,
        /// Face detector.
        #[arg(long, value_enum, default_value_t = DetectorArg::Ssd)]
        detector: DetectorArg,
        /// Pairs mode: genuine/impostor distributions, error rates per threshold, and the
        /// threshold reaching `--target-fmr`.
        #[arg(long)]
        pairs: bool,
        /// False match rate the pairs mode finds a threshold for.
        #[arg(long, default_value_t = 0.001)]
        target_fmr: f64,
        /// Pairs mode: also write an SVG plot of the error rates to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a key and print it once.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: admin, enroll, recognize, read.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<Scope>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke {
        /// The key's id.
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an administrator or change their password; the password is read from standard
    /// input (one line) or, on a terminal, prompted for twice.
    SetPassword {
        /// The administrator's sign-in name.
        #[arg(long)]
        username: String,
    },
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    rollcall_server::allocator::keep_freed_memory();
    // Logs go to stderr: stdout carries what a command prints (`eval --json`, a new key).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(settings) => serve(&cli.common, settings).await,
        Command::Migrate => {
            let store = Store::connect(&cli.common.database_url).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::ApiKey(cmd) => api_key(&cli.common, cmd).await,
        Command::Admin(AdminCommand::SetPassword { username }) => {
            set_password(&cli.common, &username).await
        }
        Command::Eval {
            dir,
            json,
            threshold,
            detector,
            pairs,
            target_fmr,
            svg,
        } => {
            let config = PipelineConfig {
                detector: detector.into(),
                ..PipelineConfig::default()
            };
            let pipeline = app::load_pipeline(&cli.common, config)?;
            let data = eval::Dataset::load(&pipeline, &dir)?;
            let (report, table) = if pairs {
                let report = eval::pairs::evaluate_pairs(&data, target_fmr);
                if let Some(path) = svg {
                    std::fs::write(&path, report.svg())
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                (serde_json::to_value(&report)?, report.table())
            } else {
                let report = eval::evaluate(&data, threshold);
                (serde_json::to_value(&report)?, report.table())
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{table}");
            }
            Ok(())
        }
    }
}

async fn serve(common: &CommonSettings, settings: ServeSettings) -> anyhow::Result<()> {
    let (store, generated) = app::open_store(common, settings.admin_key.as_deref()).await?;
    if let Some(key) = generated {
        println!(
            "\nFirst start: created an admin API key. It is shown only this once:\n\n    {key}\n"
        );
    }
    let listener =
        TcpListener::bind(settings.bind).with_context(|| format!("binding {}", settings.bind))?;
    let state = app::build_state(common, settings, store).await?;
    tracing::info!(address = %listener.local_addr()?, "rollcall is listening");
    app::serve(state, listener)?.await?;
    Ok(())
}

async fn api_key(common: &CommonSettings, cmd: KeyCommand) -> anyhow::Result<()> {
    let store = Store::connect(&common.database_url).await?;
    store.migrate().await?;
    match cmd {
        KeyCommand::Create { name, scopes } => {
            let (record, secret) = create_key(&store, &name, &scopes).await?;
            println!(
                "created key {} ({}) with scopes {:?}; it is shown only this once:\n{secret}",
                record.id, record.name, scopes
            );
        }
        KeyCommand::List => {
            println!(
                "{:>4}  {:<24} {:<10} {:<28} {:<20} status",
                "id", "name", "prefix", "scopes", "created"
            );
            for k in store.list_api_keys().await? {
                let scopes = k
                    .scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let status = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:>4}  {:<24} {:<10} {:<28} {:<20} {status}",
                    k.id,
                    k.name,
                    k.prefix,
                    scopes,
                    k.created_at.format("%Y-%m-%d %H:%M")
                );
            }
        }
        KeyCommand::Revoke { id } => {
            store.revoke_api_key(id).await?;
            println!("revoked key {id}");
        }
    }
    Ok(())
}

async fn set_password(common: &CommonSettings, username: &str) -> anyhow::Result<()> {
    let username = username.trim();
    if username.is_empty() || username.len() > 100 || username.chars().any(char::is_control) {
        anyhow::bail!("the username must be 1-100 printable characters");
    }
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {username}: "))?;
        let again = rpassword::prompt_password("Repeat it: ")?;
        if first != again {
            anyhow::bail!("the passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    let hash = hash_password(&password)?;
    let store = Store::connect(&common.database_url).await?;
    store.migrate().await?;
    store.set_admin_password(username, &hash).await?;
    println!("password set for administrator {username}");
    Ok(())
}
