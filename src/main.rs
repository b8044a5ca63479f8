//! `sipshard` command line: parse arguments, load the config, start the shards
//! (or run a tool subcommand). Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use sipshard::config::{Config, Cores};
use sipshard::db::DbHandle;
use sipshard::shard::runtime::ControlRuntime;
use sipshard::shard::{self, ShardParams};
use sipshard::stats;

#[derive(Parser)]
#[command(
    name = "sipshard",
    version,
    about = "Thread-per-core SIP proxy/registrar with Kamailio-compatible Lua (KSR) routing"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the SIP server.
    Run(ServerArgs),
    /// Check the config and the routing script, then exit.
    Check(ServerArgs),
    /// Load generator: OPTIONS (default), REGISTER with digest auth, over UDP
    /// at an open-loop rate.
    Bench(sipshard::loadgen::BenchCmd),
    /// Manage subscribers (like `kamctl add/rm/passwd`).
    User {
        #[command(subcommand)]
        cmd: sipshard::db::cli::UserCmd,
        #[command(flatten)]
        db: DbArgs,
        /// Domain for a user given without `@domain`.
        #[arg(long, global = true)]
        domain: Option<String>,
    },
    /// Database schema (Kamailio's table layout).
    Db {
        #[command(subcommand)]
        cmd: sipshard::db::cli::DbCmd,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Call the running server's control interface (like `kamcmd`).
    Ctl(sipshard::rpc::client::CtlArgs),
    /// Draw route latency from an HdrHistogram log or a live snapshot as a PNG.
    Report(sipshard::rpc::report::ReportArgs),
    /// Check a Lua script: syntax, and every KSR call sipshard does not export.
    CheckScript {
        /// The Lua script (several with --strict).
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Only compile and scan; do not load it in an engine.
        #[arg(long)]
        no_load: bool,
        /// Per script, everything sipshard lacks grouped by module (guarded
        /// calls and names only read too); exit 1 when anything is missing.
        #[arg(long)]
        strict: bool,
    },
    /// The KSR API sipshard exports.
    Kemi {
        #[command(subcommand)]
        cmd: KemiCmd,
    },
}

#[derive(Subcommand)]
enum KemiCmd {
    /// Every exported KSR function with its Kamailio signature.
    List {
        /// Markdown tables, one per module.
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
        /// JSON as Kamailio's `app_lua.api_list`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct DbArgs {
    /// Database URL: sqlite://PATH, postgres://..., mysql://...
    /// (default: the config's `[db] url`, else sqlite://sipshard.db).
    #[arg(long, global = true)]
    db: Option<String>,
    /// Config file to take `[db] url` from.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
}

impl DbArgs {
    fn url(&self) -> Result<String, String> {
        if let Some(u) = &self.db {
            return Ok(u.clone());
        }
        match &self.config {
            Some(p) => Ok(Config::from_file(p).map_err(|e| e.to_string())?.db.url),
            None => Ok(Config::embedded().db.url),
        }
    }
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// TOML config file (see etc/sipshard.toml); without it, embedded defaults.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// UDP listen address, e.g. 127.0.0.1:5060.
    #[arg(long, short = 'l')]
    listen: Option<std::net::SocketAddr>,
    /// Shards: a count (`2`), a CPU list (`0,1` or `0-3`) or `auto`.
    #[arg(long)]
    cores: Option<Cores>,
    /// Lua routing script (default: the bundled etc/sipshard.lua).
    #[arg(long, short = 's')]
    script: Option<PathBuf>,
    /// What runs the routes: `lua` (the script) or `native` (the bundled
    /// script's logic in Rust); overrides `[core] route`.
    #[arg(long, value_enum)]
    route: Option<sipshard::config::RouteImpl>,
    /// Database URL (overrides `[db] url`).
    #[arg(long)]
    db: Option<String>,
}

fn load_config(a: &ServerArgs) -> Result<Config, String> {
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
        None => Config::embedded(),
    };
    if let Some(l) = a.listen {
        cfg.core.listen = l;
    }
    if let Some(c) = &a.cores {
        cfg.core.cores = c.clone();
    }
    if let Some(s) = &a.script {
        cfg.core.script = Some(s.clone());
    }
    if let Some(r) = a.route {
        cfg.core.route = r;
    }
    if let Some(d) = &a.db {
        cfg.db.url = d.clone();
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .try_init();
}

fn prepare(a: &ServerArgs) -> Result<(ShardParams, Vec<sipshard::config::ShardSpec>), String> {
    let cfg = load_config(a)?;
    init_logging(&cfg.core.log_level);
    if cfg.core.route == sipshard::config::RouteImpl::Native {
        if let Some(p) = &cfg.core.script {
            tracing::warn!(
                script = %p.display(),
                "[core] route = \"native\": the script is not loaded"
            );
        }
    }
    let specs = cfg.shard_specs().map_err(|e| e.to_string())?;
    let (script, script_name) = shard::load_script(&cfg)?;
    let n = specs.len();
    let params = ShardParams::new(cfg, script, script_name, n);
    shard::check_script(&params)?;
    Ok((params, specs))
}

fn run(a: ServerArgs) -> Result<(), String> {
    // A fixed trim threshold: glibc's dynamic one grows with the largest
    // buffer ever freed (the location load) and then keeps that much free
    // memory resident for good.
    // It is 4 MiB (and the main heap grows 1 MiB at a time): a proxy's live
    // memory rises and falls with its transactions, and with 128 KiB glibc
    // shrank and regrew the shard arenas with an mprotect call about once
    // per call (strace -c of a 2000 calls/s drive).
    sipshard::transport::sys::malloc_trim_threshold(4 << 20);
    sipshard::transport::sys::malloc_top_pad(1 << 20);
    let (mut params, specs) = prepare(&a)?;
    let n = specs.len();
    let control_rt =
        ControlRuntime::start().map_err(|e| format!("cannot start the control runtime: {e}"))?;
    let db_url = params.config.db.url.clone();
    let db = DbHandle::start(&params.config.db, control_rt.handle())
        .map_err(|e| format!("db.url {}: {e}", redact(&db_url)))?;
    tracing::info!(url = %redact(&db_url), "database connected");
    if matches!(params.config.registrar.db_mode, 1 | 2) {
        let rows = db
            .location_load_all()
            .map_err(|e| format!("loading location: {e}"))
            .and_then(|f| {
                control_rt
                    .handle()
                    .block_on(f)
                    .map_err(|e| format!("loading location: {e}"))
            })?;
        tracing::info!(rows = rows.len(), "location rows loaded from the database");
        params.set_location_rows(rows);
        // The rows are gone; give their memory back (a registrar's RSS
        // should be its table, not its start-up buffers).
        sipshard::transport::sys::malloc_trim();
    }
    control_rt
        .handle()
        .block_on(params.tables.load_modules(&params.config, &db))?;
    params.db = Some(db);
    if !params.config.sqlops.is_empty() {
        let h = sipshard::db::sqlops::SqlopsHandle::start(
            &params.config.sqlops,
            params.config.db.sqlops_queue_depth,
            control_rt.handle(),
        )
        .map_err(|e| format!("sqlops: {e}"))?;
        params.sqlops = Some(h);
    }
    if !params.config.redis.is_empty() {
        let servers = params
            .config
            .redis
            .iter()
            .map(|r| r.resolve())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("redis: {e}"))?;
        let db = &params.config.db;
        let h = sipshard::db::redis::RedisHandle::start(
            &servers,
            db.redis_queue_depth,
            // Commands in flight at once, all servers together.
            256,
            db.redis_reply_elements_max,
            control_rt.handle(),
        )
        .map_err(|e| format!("redis: {e}"))?;
        params.redis = Some(h);
    }
    params.dns = Some(sipshard::db::dns::DnsHandle::start(
        &params.config.ipops,
        control_rt.handle(),
    ));
    let params = Arc::new(params);
    let rpc_cfg = params.config.rpc.clone();
    let running = shard::start(params, specs).map_err(|e| e.to_string())?;
    if rpc_cfg.enabled {
        match sipshard::rpc::spawn(
            rpc_cfg.clone(),
            running.control.clone(),
            control_rt.handle(),
        ) {
            Ok(addr) => tracing::info!(%addr, "control interface (JSON-RPC, /metrics) listening"),
            Err(e) => {
                running.stop();
                return Err(format!("rpc.listen {}: {e}", rpc_cfg.listen));
            }
        }
    }
    tracing::info!(shards = n, listen = %running.local_addr, "sipshard started");
    let snaps = running.wait();
    drop(control_rt);
    print_summary(&snaps);
    Ok(())
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The shutdown report: per shard and merged route times, Kamailio's KEMI
/// table plus percentiles.
fn print_summary(snaps: &[stats::ShardSnapshot]) {
    println!("== route execution time (microseconds) ==");
    for s in snaps {
        println!("-- shard {} (cpu {:?})", s.shard, s.cpu);
        print!("{}", stats::format_route_table(&s.routes));
    }
    println!("-- all shards");
    print!("{}", stats::format_route_table(&stats::merge_routes(snaps)));
    let total = |c: stats::Counter| snaps.iter().map(|s| s.counters[c as usize]).sum::<u64>();
    println!(
        "requests {} replies {} suspended routes {} handed over {} malformed {} script errors {} panics {}",
        total(stats::Counter::RcvRequests),
        total(stats::Counter::RcvReplies),
        total(stats::Counter::RoutesSuspended),
        total(stats::Counter::DispatchSent),
        total(stats::Counter::BadMsgHdr),
        total(stats::Counter::ErrRequests),
        total(stats::Counter::Panics),
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Check(a) => prepare(&a).map(|(p, specs)| {
            println!(
                "config and script OK: {} shard(s), script {}{}",
                specs.len(),
                p.script_name,
                if p.config.core.route == sipshard::config::RouteImpl::Native {
                    " (etc/sipshard.lua's logic in Rust, no Lua loaded)"
                } else {
                    ""
                }
            );
        }),
        Cmd::Bench(b) => sipshard::loadgen::run_cmd(b),
        Cmd::User { cmd, db, domain } => db
            .url()
            .and_then(|url| {
                sipshard::db::cli::run_user(&url, domain.as_deref(), cmd).map_err(|e| e.to_string())
            })
            .map(|out| print!("{out}")),
        Cmd::Db { cmd, db } => db
            .url()
            .and_then(|url| sipshard::db::cli::run_db(&url, cmd).map_err(|e| e.to_string()))
            .map(|out| print!("{out}")),
        Cmd::Ctl(a) => match sipshard::rpc::client::run_ctl(a) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code.clamp(1, 255) as u8),
            Err(e) => Err(e.to_string()),
        },
        Cmd::Report(a) => sipshard::rpc::report::run_report(a).map_err(|e| e.to_string()),
        Cmd::CheckScript {
            files,
            no_load,
            strict,
        } => {
            use sipshard::kemi::check_script::{run_cli, run_cli_strict};
            let r = if strict {
                run_cli_strict(&files, !no_load)
            } else if files.len() == 1 {
                files.first().map_or(Ok(true), |f| run_cli(f, !no_load))
            } else {
                Err("several scripts need --strict".to_string())
            };
            return match r {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("sipshard: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Kemi {
            cmd: KemiCmd::List { markdown, json },
        } => {
            use sipshard::kemi::exports::{exports, render, ListFormat};
            let format = if markdown {
                ListFormat::Markdown
            } else if json {
                ListFormat::Json
            } else {
                ListFormat::Text
            };
            exports().map(|l| print!("{}", render(&l, format)))
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipshard: {e}");
            ExitCode::from(1)
        }
    }
}
