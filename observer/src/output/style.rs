//! The human format's colours, shared by event lines and reports.
pub const RESET: &str = "\x1b[0m";
pub const BOLD_RED: &str = "\x1b[1;31m";
pub const RED: &str = "\x1b[31m";
pub const GREEN: &str = "\x1b[32m";
pub const YELLOW: &str = "\x1b[33m";
pub const MAGENTA: &str = "\x1b[35m";
pub const DIM: &str = "\x1b[2m";

pub struct HumanFormat {
    pub color: bool,
}

impl HumanFormat {
    pub fn paint(&self, color: &str, text: &str) -> String {
        if self.color {
            format!("{color}{text}{RESET}")
        } else {
            text.to_string()
        }
    }
}
