//! Progress on stderr for work that can take more than about a second
//! (loading, lowering, optimising, code generation, bundle writing, many
//! models): an `indicatif` spinner or bar when stderr is a terminal,
//! nothing otherwise, so logs and pipes stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner or bar that clears itself when finished or dropped.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A spinner saying `msg` (hidden unless stderr is a terminal).
    pub fn spinner(msg: impl Into<String>) -> Progress {
        Progress(interactive().then(|| {
            let bar = ProgressBar::new_spinner().with_message(msg.into());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        }))
    }

    /// A bar over `len` items (models, modules), each announced with
    /// [`Self::item`].
    pub fn bar(len: usize, what: &str) -> Progress {
        Progress(interactive().then(|| {
            let style = ProgressStyle::with_template(&format!(
                "{{bar:30}} {{pos}}/{{len}} {what} {{msg}} [{{elapsed}}]"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = ProgressBar::new(len as u64).with_style(style);
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        }))
    }

    /// Names the item now worked on (bars) or the step (spinners).
    pub fn item(&self, msg: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg.into());
        }
    }

    /// One item done.
    pub fn inc(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }

    /// Clears the line.
    pub fn finish(self) {}
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Progress is drawn only for a person watching stderr.
fn interactive() -> bool {
    std::io::stderr().is_terminal()
}
