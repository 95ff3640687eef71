//! host-sim's command line: replay a scenario file against a proxy-wasm module, or
//! list a module's imports. Exit codes: 0 all expectations held, 1 one failed (or
//! an import is missing), 2 usage or load error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use host_sim::{provided_imports, run_scenario, Module, Scenario};

#[derive(Parser)]
#[command(
    name = "host-sim",
    version,
    about = "A deterministic proxy-wasm ABI 0.2.1 host for testing filters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a scenario file against a module and check its expectations.
    Run(RunArgs),
    /// List the module's imports and whether host-sim provides each.
    Imports {
        /// The module (.wasm or .wat).
        #[arg(long)]
        wasm: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The module (.wasm or .wat).
    #[arg(long)]
    wasm: PathBuf,
    /// Plugin configuration file; overrides the scenario's `plugin_config`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The scenario (YAML or JSON).
    #[arg(long)]
    scenario: PathBuf,
    /// RNG seed; overrides the scenario's `seed`.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of workers (VMs); overrides the scenario's `workers`.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: Option<u16>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Imports { wasm } => imports(&wasm),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("host-sim: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &RunArgs) -> Result<ExitCode, String> {
    let mut scenario = Scenario::from_file(&args.scenario).map_err(|e| e.to_string())?;
    if let Some(path) = &args.config {
        let config =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        scenario = scenario.with_plugin_config(config);
    }
    if let Some(seed) = args.seed {
        scenario = scenario.with_seed(seed);
    }
    if let Some(workers) = args.workers {
        scenario = scenario.with_workers(usize::from(workers));
    }
    let module = Module::from_file(&args.wasm).map_err(|e| e.to_string())?;
    let report = run_scenario(&module, &scenario).map_err(|e| e.to_string())?;
    print!(
        "{}",
        match args.format {
            Format::Table => report.render_table(),
            Format::Json => report.render_json(),
        }
    );
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Lists imports without `Module::from_file`, which rejects a module at its first
/// missing import: here every missing one should be shown.
fn imports(path: &Path) -> Result<ExitCode, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, &bytes).map_err(|e| {
        format!(
            "{} is not a valid WebAssembly module: {e:#}",
            path.display()
        )
    })?;
    let provided = provided_imports();
    let abi = module
        .exports()
        .filter_map(|e| e.name().strip_prefix("proxy_abi_version_"))
        .map(|v| v.replace('_', "."))
        .next();
    match abi {
        Some(v) => println!("{}: proxy-wasm ABI {v}", path.display()),
        None => println!("{}: no proxy-wasm ABI marker export", path.display()),
    }
    let rows: Vec<(String, &str)> = module
        .imports()
        .map(|i| {
            let is_func = matches!(i.ty(), wasmtime::ExternType::Func(_));
            let known = is_func
                && provided
                    .iter()
                    .any(|(m, n)| m == i.module() && n == i.name());
            let status = match (known, is_func) {
                (true, _) => "provided",
                (false, true) => "MISSING",
                (false, false) => "MISSING (not a function)",
            };
            (format!("{}::{}", i.module(), i.name()), status)
        })
        .collect();
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, status) in &rows {
        println!("{name:width$}  {status}");
    }
    let missing = rows.iter().filter(|(_, s)| *s != "provided").count();
    println!("{} imports, {missing} missing", rows.len());
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
