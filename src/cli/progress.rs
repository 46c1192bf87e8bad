//! The command line's view of a run's progress: a progress bar over each
//! epoch's steps and a spinner over work without steps when stdout is a
//! terminal, one log line per epoch always.

use indicatif::{ProgressBar, ProgressStyle};
use nhpatch::train::progress::{Event, Observer, SharedObserver};
use nhpatch::train::report::print_epoch_line;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

/// Draws bars with indicatif and prints the report's lines.
pub struct Terminal {
    tty: bool,
    bar: Mutex<Option<ProgressBar>>,
}

/// The observer every command that trains hands to the library.
pub fn terminal() -> SharedObserver {
    Arc::new(Terminal { tty: std::io::stdout().is_terminal(), bar: Mutex::new(None) })
}

impl Terminal {
    fn replace(&self, bar: Option<ProgressBar>) {
        let mut slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            old.finish_and_clear();
        }
        *slot = bar;
    }
}

impl Observer for Terminal {
    fn event(&self, event: &Event<'_>) {
        match *event {
            Event::Info(line) => {
                self.replace(None);
                println!("{line}");
            }
            Event::Notice(line) => {
                self.replace(None);
                eprintln!("{line}");
            }
            Event::EpochStarted { stage, epoch, epochs, steps, unit } => {
                if !self.tty {
                    return;
                }
                let bar = ProgressBar::new(steps);
                let style =
                    format!("{stage} {epoch}/{epochs} [{{bar:30}}] {{pos}}/{{len}} steps  {{msg}}  ETA {{eta}}");
                if let Ok(st) = ProgressStyle::with_template(&style) {
                    bar.set_style(st.progress_chars("=> "));
                }
                bar.set_message(format!("0 {unit}/s"));
                self.replace(Some(bar));
            }
            Event::Step { loss, items_per_second, unit } => {
                if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    bar.inc(1);
                    bar.set_message(format!("loss {loss:.3}  {items_per_second:.0} {unit}/s"));
                }
            }
            Event::EpochFinished { stage, unit, metrics, epochs } => {
                self.replace(None);
                println!("{}", print_epoch_line(stage, unit, metrics, epochs));
            }
            Event::Busy(what) => {
                if !self.tty {
                    return;
                }
                let bar = ProgressBar::new_spinner();
                if let Ok(st) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                    bar.set_style(st);
                }
                bar.set_message(what.to_string());
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                self.replace(Some(bar));
            }
            Event::Idle => self.replace(None),
        }
    }
}
