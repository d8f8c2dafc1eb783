//! Progress bars on stderr for the long phases (registration, connecting, the run). Hidden when
//! stderr is not a terminal; then each phase still prints one summary line when it ends.

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(len: u64, phase: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(phase.to_owned());
    bar
}

/// Ends a phase: the bar stays on screen with `summary`, or, without a terminal, one line.
pub fn finish(bar: &ProgressBar, summary: String) {
    if bar.is_hidden() {
        eprintln!(
            "{:>12} {summary} ({:.1}s)",
            bar.prefix(),
            bar.elapsed().as_secs_f64()
        );
    }
    bar.finish_with_message(summary);
}

/// A one-line note between phases, printed above any bar.
pub fn note(message: impl AsRef<str>) {
    eprintln!("{}", message.as_ref());
}
