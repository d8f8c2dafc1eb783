//! A small SVG writer for the two charts every run draws: latency by percentile and throughput
//! over time. Plain line charts, written by hand (no plotting dependency): open the file in a
//! browser, or convert it with `rsvg-convert -o plot.png plot.svg`.

use std::fmt::Write;

/// One line of a chart.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points,
            dashed: false,
        }
    }

    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Plain numbers from 0 (seconds since the start, for example).
    Linear,
    /// `x = log10(1 / (1 - p))`, labelled as percentiles: 0 is 0%, 1 is 90%, 2 is 99%, ...
    Percentile,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: XAxis,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 960.0;
const CHART_HEIGHT: f64 = 360.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 48.0;
const LINE: f64 = 16.0;
const LEGEND_ROW: f64 = 18.0;
/// Longest description line drawn (about the width of the picture at 11 px).
const MAX_LINE_CHARS: usize = 160;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// The whole picture: a title, a few lines of run description, then the charts stacked.
pub fn render(title: &str, description: &[String], charts: &[Chart]) -> String {
    let header = 36.0 + LINE * description.len() as f64;
    let height = header + CHART_HEIGHT * charts.len() as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="16" y="26" font-size="17" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (i, line) in description.iter().enumerate() {
        let _ = write!(
            svg,
            r##"<text x="16" y="{}" fill="#444" font-size="11">{}</text>"##,
            46.0 + LINE * i as f64,
            escape(&shorten(line, MAX_LINE_CHARS))
        );
    }
    for (i, chart) in charts.iter().enumerate() {
        draw_chart(&mut svg, chart, header + CHART_HEIGHT * i as f64);
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_chart(svg: &mut String, chart: &Chart, top: f64) {
    // Legend under the title, wrapped into as many rows as it needs.
    let placed = place_legend(&chart.series);
    let rows = placed.last().map_or(0, |&(_, row)| row);
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 20.0,
        escape(&chart.title)
    );
    for (i, (series, &(legend_x, row))) in chart.series.iter().zip(&placed).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let y = top + 36.0 + LEGEND_ROW * f64::from(row);
        let _ = write!(
            svg,
            r#"<line x1="{legend_x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2.5"{}/><text x="{}" y="{}">{}</text>"#,
            legend_x + 22.0,
            dash(series),
            legend_x + 27.0,
            y + 4.0,
            escape(&series.label),
        );
    }
    let plot = Plot::new(chart, top, rows);
    plot.draw_frame(svg, chart);
    for (i, series) in chart.series.iter().enumerate() {
        if !series.points.is_empty() {
            plot.draw_line(svg, series, COLORS[i % COLORS.len()]);
        }
    }
}

/// Where each series' legend entry goes: its x, and its row (from 0).
fn place_legend(series: &[Series]) -> Vec<(f64, u32)> {
    let mut placed = Vec::with_capacity(series.len());
    let (mut legend_x, mut row) = (LEFT, 0_u32);
    for series in series {
        let width = 40.0 + 7.0 * series.label.chars().count() as f64;
        if legend_x + width > WIDTH - RIGHT && legend_x > LEFT {
            row += 1;
            legend_x = LEFT;
        }
        placed.push((legend_x, row));
        legend_x += width;
    }
    placed
}

/// The stroke attribute of a dashed series (none for a solid one).
fn dash(series: &Series) -> &'static str {
    if series.dashed {
        r#" stroke-dasharray="6 4""#
    } else {
        ""
    }
}

/// A chart's plotting area (`x0..x1` left to right, `y0` the bottom and `y1` the top), its
/// ticks and the data values at the right and top edges.
struct Plot {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    x_ticks: Vec<(f64, String)>,
    x_max: f64,
    y_ticks: Vec<(f64, String)>,
    y_max: f64,
}

impl Plot {
    /// The area of the chart drawn at `top` under a legend of `rows` + 1 rows, scaled to its
    /// data.
    fn new(chart: &Chart, top: f64, rows: u32) -> Self {
        let (x0, x1) = (LEFT, WIDTH - RIGHT);
        let (y0, y1) = (
            top + CHART_HEIGHT - BOTTOM,
            top + TOP + LEGEND_ROW * f64::from(rows),
        );
        let points = chart.series.iter().flat_map(|s| s.points.iter());
        let (x_max_data, y_max_data) = points.fold((0.0_f64, 0.0_f64), |(x, y), &(px, py)| {
            (x.max(px), y.max(py))
        });
        // A time axis ends where the data ends; the percentile axis at a whole "nine".
        let (x_ticks, x_max): (Vec<(f64, String)>, f64) = match chart.x_axis {
            XAxis::Linear if x_max_data > 0.0 => {
                let mut ticks = linear_ticks(x_max_data, 10);
                ticks.retain(|t| t.0 <= x_max_data * (1.0 + 1e-9));
                (ticks, x_max_data)
            }
            XAxis::Linear => (linear_ticks(1.0, 10), 1.0),
            XAxis::Percentile => {
                let ticks = percentile_ticks(x_max_data);
                let max = ticks.last().map_or(1.0, |t| t.0);
                (ticks, max)
            }
        };
        // A little headroom, so a flat line at the maximum does not run along the frame.
        let y_ticks = linear_ticks(y_max_data * 1.04, 6);
        let y_max = y_ticks.last().map_or(1.0, |t| t.0).max(f64::MIN_POSITIVE);
        Self {
            x0,
            x1,
            y0,
            y1,
            x_ticks,
            x_max,
            y_ticks,
            y_max,
        }
    }

    fn sx(&self, x: f64) -> f64 {
        self.x0 + (self.x1 - self.x0) * x / self.x_max
    }

    fn sy(&self, y: f64) -> f64 {
        self.y0 - (self.y0 - self.y1) * y / self.y_max
    }

    /// The grid with its tick labels, the frame, the axis labels, and "no data" when there is
    /// none.
    fn draw_frame(&self, svg: &mut String, chart: &Chart) {
        let Self { x0, x1, y0, y1, .. } = *self;
        for (value, label) in &self.y_ticks {
            let y = self.sy(*value);
            let _ = write!(
                svg,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
                x0 - 6.0,
                y + 4.0
            );
        }
        for (value, label) in &self.x_ticks {
            let x = self.sx(*value);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#e3e3e3"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
                y0 + 16.0
            );
        }
        let _ = write!(
            svg,
            r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
            x1 - x0,
            y0 - y1
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            y0 + 36.0,
            escape(&chart.x_label)
        );
        let (label_x, label_y) = (18.0, (y0 + y1) / 2.0);
        let _ = write!(
            svg,
            r#"<text x="{label_x}" y="{label_y}" text-anchor="middle" transform="rotate(-90 {label_x} {label_y})">{}</text>"#,
            escape(&chart.y_label)
        );
        if chart.series.iter().all(|s| s.points.is_empty()) {
            let _ = write!(
                svg,
                r##"<text x="{}" y="{}" text-anchor="middle" fill="#888" font-size="16">no data</text>"##,
                (x0 + x1) / 2.0,
                (y0 + y1) / 2.0
            );
        }
    }

    /// One series as a polyline in `color`.
    fn draw_line(&self, svg: &mut String, series: &Series, color: &str) {
        let mut path = String::new();
        for &(x, y) in &series.points {
            let _ = write!(path, "{:.1},{:.1} ", self.sx(x), self.sy(y));
        }
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"{}/>"#,
            path.trim_end(),
            dash(series)
        );
    }
}

/// Ticks from 0 to a round number at or above `max`, about `target` of them, each labelled.
pub fn linear_ticks(max: f64, target: usize) -> Vec<(f64, String)> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let step = nice_step(max / target.max(1) as f64);
    let count = (max / step - 1e-9).ceil().max(1.0) as usize;
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    (0..=count)
        .map(|i| {
            let value = step * i as f64;
            (value, format!("{value:.decimals$}"))
        })
        .collect()
}

/// The smallest of 1, 2, 5 × 10^k that is at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    let magnitude = 10_f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// Ticks of the percentile axis up to `max` (rounded up to a whole "nine"), plus the median.
pub fn percentile_ticks(max: f64) -> Vec<(f64, String)> {
    let nines = max.ceil().clamp(1.0, 6.0) as usize;
    let mut ticks = vec![(0.0, "0%".to_owned()), (2_f64.log10(), "50%".to_owned())];
    for n in 1..=nines {
        let label = format!(
            "{:.*}%",
            n.saturating_sub(2),
            100.0 - 100.0 * 0.1_f64.powi(n as i32)
        );
        ticks.push((n as f64, label));
    }
    ticks
}

/// `text`, cut to `max` characters with an ellipsis when longer.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(42.0), 50.0);
        assert!((nice_step(0.013) - 0.02).abs() < 1e-12);
    }

    #[test]
    fn linear_ticks_cover_the_maximum() {
        let ticks = linear_ticks(93.0, 6);
        assert_eq!(ticks.first().map(|t| t.0), Some(0.0));
        assert_eq!(ticks.last().map(|t| t.0), Some(100.0));
        assert_eq!(ticks[1].1, "20");
        let small = linear_ticks(0.35, 5);
        assert_eq!(small.last().map(|t| t.1.as_str()), Some("0.4"));
        assert_eq!(linear_ticks(0.0, 5).last().map(|t| t.0), Some(1.0));
        assert_eq!(linear_ticks(f64::NAN, 5).last().map(|t| t.0), Some(1.0));
    }

    #[test]
    fn percentile_tick_labels() {
        let labels: Vec<String> = percentile_ticks(3.2).into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["0%", "50%", "90%", "99%", "99.9%", "99.99%"]);
    }

    #[test]
    fn renders_escaped_text_and_lines() {
        let chart = Chart {
            title: "a < b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_axis: XAxis::Linear,
            series: vec![
                Series::new("one", vec![(0.0, 1.0), (1.0, 2.0)]),
                Series::new("two & three", vec![]).dashed(),
            ],
        };
        let svg = render("t", &["run \"x\"".to_owned()], &[chart]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt; b"));
        assert!(svg.contains("two &amp; three"));
        assert!(svg.contains("run &quot;x&quot;"));
        assert_eq!(svg.matches("<polyline").count(), 1);
    }

    #[test]
    fn long_lines_are_shortened() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
    }
}
