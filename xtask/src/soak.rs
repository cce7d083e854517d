//! `cargo xtask soak --minutes N`: the soak test (tests/tests/soak.rs) for as long as
//! asked, as root: steady churn of real processes and connections while observer's RSS
//! and CPU are sampled every 5 s, then a plot of both in the terminal.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{host_cargo, is_root, privileged_test_binaries, run};

/// Rows of the terminal plot.
const PLOT_ROWS: usize = 8;
/// Columns of the terminal plot: a long run's samples are grouped, each column the
/// largest of its group, so an hour fits a terminal.
const PLOT_COLUMNS: usize = 72;

pub fn run_soak(root: &Path, minutes: u64) -> Result<()> {
    ensure!(is_root(), "the soak loads eBPF programs: run it as root");
    run(host_cargo(root).args(["build", "--package", "observer"]))?;
    let binary = privileged_test_binaries(root)?
        .into_iter()
        .find(|b| {
            b.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("soak-"))
        })
        .context("the soak test binary was not built")?;
    let mut child = Command::new(&binary)
        .args(["--nocapture", "--test-threads=1"])
        .env("OBSERVER_BIN", root.join("target/debug/observer"))
        .env("OBSERVER_SOAK_SECONDS", (minutes * 60).to_string())
        .current_dir(root.join("tests"))
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the soak test")?;
    let mut samples: Vec<(f64, f64, f64)> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        eprintln!("{line}");
        if let Some(sample) = parse_sample(&line) {
            samples.push(sample);
        }
    }
    let status = child.wait()?;
    plot("observer RSS (MiB)", &samples, |s| s.1 / 1024.0);
    plot("observer CPU (% of a core)", &samples, |s| s.2);
    if !status.success() {
        bail!("the soak test failed");
    }
    Ok(())
}

/// `soak t=   35s rss= 14496 KiB cpu=  8.4%` → (35, 14496, 8.4).
fn parse_sample(line: &str) -> Option<(f64, f64, f64)> {
    let rest = line.strip_prefix("soak t=")?;
    let (at, rest) = rest.split_once("s rss=")?;
    let (rss, rest) = rest.split_once("KiB cpu=")?;
    let cpu = rest.trim().strip_suffix('%')?;
    Some((
        at.trim().parse().ok()?,
        rss.trim().parse().ok()?,
        cpu.trim().parse().ok()?,
    ))
}

/// A column a sample, `PLOT_ROWS` high, scaled from 0 to the largest value.
fn plot(title: &str, samples: &[(f64, f64, f64)], value: impl Fn(&(f64, f64, f64)) -> f64) {
    let values: Vec<f64> = samples.iter().map(value).collect();
    let per_column = values.len().div_ceil(PLOT_COLUMNS).max(1);
    let columns: Vec<f64> = values
        .chunks(per_column)
        .map(|group| group.iter().copied().fold(f64::MIN, f64::max))
        .collect();
    let Some(top) = values.iter().copied().reduce(f64::max).filter(|t| *t > 0.0) else {
        return;
    };
    eprintln!("\n{title}, a column every {} s:", per_column * 5);
    for row in (0..PLOT_ROWS).rev() {
        let level = top * row as f64 / PLOT_ROWS as f64;
        let bars: String = columns
            .iter()
            .map(|v| if *v > level { '█' } else { ' ' })
            .collect();
        eprintln!("{:>8.1} |{bars}", top * (row + 1) as f64 / PLOT_ROWS as f64);
    }
    let (low, high) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    eprintln!("         min {low:.1}, max {high:.1}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soak_tests_samples() {
        assert_eq!(
            parse_sample("soak t=   35s rss= 14496 KiB cpu=  8.4%"),
            Some((35.0, 14496.0, 8.4))
        );
        assert_eq!(parse_sample("soak: 6012 exits"), None);
    }
}
