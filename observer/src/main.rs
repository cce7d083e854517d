//! observer: an eBPF-backed shutdown observer. See README.md.
use std::process::ExitCode;

use clap::Parser;
use observer::commands::{advise, check, cli, rehearse, report, watch};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Watch(args) => match watch::run(*args) {
            Ok(watch::Ended::Stopped | watch::Ended::GatePassed) => Ok(()),
            Ok(watch::Ended::GateFailed) => return ExitCode::FAILURE,
            Ok(watch::Ended::GateTimedOut) => return ExitCode::from(2),
            Err(error) => Err(error),
        },
        cli::Command::Report(args) => report::run(&args),
        cli::Command::Advise(args) => advise::run(&args),
        cli::Command::Rehearse(args) => match rehearse::run(&args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        cli::Command::Completions { shell } => {
            std::io::Write::write_all(&mut std::io::stdout(), &cli::completions(shell))
                .map_err(anyhow::Error::from)
        }
        cli::Command::Man => cli::man_page()
            .and_then(|page| std::io::Write::write_all(&mut std::io::stdout(), &page))
            .map_err(anyhow::Error::from),
        cli::Command::Check => match check::run() {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("observer: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
