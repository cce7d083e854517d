//! Decoding a wait(2) status word exactly as WIFEXITED/WEXITSTATUS/WTERMSIG/WCOREDUMP do.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitStatus {
    /// WEXITSTATUS when the process exited normally.
    pub code: Option<i32>,
    /// WTERMSIG when a signal ended it.
    pub signal: Option<i32>,
    pub core_dumped: bool,
}

impl WaitStatus {
    pub fn decode(raw: u32) -> Self {
        let signal = (raw & 0x7f) as i32;
        if signal == 0 {
            Self {
                code: Some(((raw >> 8) & 0xff) as i32),
                signal: None,
                core_dumped: false,
            }
        } else {
            Self {
                code: None,
                signal: Some(signal),
                core_dumped: raw & 0x80 != 0,
            }
        }
    }

    pub fn exited(code: i32) -> Self {
        Self {
            code: Some(code & 0xff),
            signal: None,
            core_dumped: false,
        }
    }

    pub fn killed(signal: i32) -> Self {
        Self {
            code: None,
            signal: Some(signal),
            core_dumped: false,
        }
    }

    /// What a shell shows in `$?`: the code, or 128 + the signal.
    pub fn shell_status(&self) -> Option<i32> {
        self.code.or(self.signal.map(|sig| 128 + sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_the_wait_macros() {
        assert_eq!(WaitStatus::decode(0x300), WaitStatus::exited(3));
        assert_eq!(WaitStatus::decode(0xff00).shell_status(), Some(255));
        assert_eq!(WaitStatus::decode(15), WaitStatus::killed(15));
        assert_eq!(WaitStatus::decode(15).shell_status(), Some(143));
        assert_eq!(WaitStatus::decode(9).shell_status(), Some(137));
        let segv_core = WaitStatus::decode(0x8b);
        assert_eq!((segv_core.signal, segv_core.core_dumped), (Some(11), true));
        assert_eq!(WaitStatus::exited(256 + 7).code, Some(7));
    }
}
