//! Signal numbers and names (x86-64 / generic Linux numbering).

/// Names of the standard signals, indexed by number (0 is unused).
const NAMES: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGQUIT: i32 = 3;
pub use observer_common::SIGKILL;
const SIGUSR1: i32 = 10;
pub const SIGTERM: i32 = 15;
const SIGWINCH: i32 = 28;
const SIGRTMIN: i32 = 34;

/// The signals after which a process counts as shutting down (its accepts are reported).
pub const TERMINATION_SIGNALS: [i32; 5] = [SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGKILL];

/// Stop signals container images declare instead of SIGTERM (STOPSIGNAL), which the
/// kernel programs report too: HAProxy's (SIGUSR1, its soft stop), httpd's (SIGWINCH,
/// its graceful stop) and systemd-in-a-container's (SIGRTMIN+3). One is written only
/// when it is its target's container's own stop signal.
pub const CONTAINER_STOP_SIGNALS: [i32; 3] = [SIGUSR1, SIGWINCH, SIGRTMIN + 3];
const SIGRTMAX: i32 = 64;

/// The conventional name of `sig` ("SIGTERM", "SIGRTMIN+3"), or "SIG<n>" for others.
pub fn name(sig: i32) -> String {
    match sig {
        1..=31 => NAMES[sig as usize].to_string(),
        SIGRTMIN => "SIGRTMIN".to_string(),
        35..=SIGRTMAX => format!("SIGRTMIN+{}", sig - SIGRTMIN),
        _ => format!("SIG{sig}"),
    }
}

/// Parses "TERM", "SIGTERM", "sigterm", "15", or "RTMIN+2".
pub fn parse(text: &str) -> Result<i32, String> {
    let trimmed = text.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&number) {
            Ok(number)
        } else {
            Err(format!("signal number {number} is outside 1..={SIGRTMAX}"))
        };
    }
    let upper = trimmed.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if bare != trimmed.to_ascii_uppercase()
        && let Ok(number) = bare.parse::<i32>()
    {
        return parse(&number.to_string()); // "SIG32", as `name` writes unnamed signals
    }
    if let Some(index) = NAMES.iter().skip(1).position(|n| &n[3..] == bare) {
        return Ok(index as i32 + 1);
    }
    if bare == "RTMIN" {
        return Ok(SIGRTMIN);
    }
    if let Some(offset) = bare
        .strip_prefix("RTMIN+")
        .and_then(|n| n.parse::<i32>().ok())
        && (0..=SIGRTMAX - SIGRTMIN).contains(&offset)
    {
        return Ok(SIGRTMIN + offset);
    }
    Err(format!(
        "unknown signal '{text}' (use a name such as TERM or SIGKILL, or a number 1-64)"
    ))
}

/// Parses a comma-separated list ("TERM,INT,9").
pub fn parse_list(text: &str) -> Result<Vec<i32>, String> {
    let signals = text
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    if signals.is_empty() {
        return Err("the signal list is empty".to_string());
    }
    Ok(signals)
}

/// Signals whose default action ends the process (term or core), per signal(7).
pub fn is_fatal_by_default(sig: i32) -> bool {
    matches!(sig, 1..=16 | 24..=27 | 29..=31 | SIGRTMIN..=SIGRTMAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for sig in 1..=64 {
            assert_eq!(parse(&name(sig)), Ok(sig), "{}", name(sig));
        }
        assert_eq!(name(15), "SIGTERM");
        assert_eq!(name(36), "SIGRTMIN+2");
    }

    #[test]
    fn accepts_the_spellings_users_type() {
        assert_eq!(parse("term"), Ok(15));
        assert_eq!(parse("SIGKILL"), Ok(9));
        assert_eq!(parse(" 2 "), Ok(2));
        assert_eq!(parse_list("TERM,int,9"), Ok(vec![15, 2, 9]));
    }

    #[test]
    fn rejects_unknown_signals_with_a_reason() {
        assert!(
            parse("TERMINATE")
                .unwrap_err()
                .contains("unknown signal 'TERMINATE'")
        );
        assert!(parse("0").unwrap_err().contains("outside"));
        assert!(parse("65").is_err());
        assert!(parse_list(",").unwrap_err().contains("empty"));
    }

    #[test]
    fn classifies_default_actions_as_signal_7_does() {
        for sig in [SIGHUP, SIGINT, SIGKILL, SIGTERM, 11, 6, 13, 40] {
            assert!(is_fatal_by_default(sig), "{sig}");
        }
        for sig in [17, 18, 19, 20, 21, 22, 23, 28] {
            assert!(!is_fatal_by_default(sig), "{sig}");
        }
    }
}
