//! The comparison as a PNG: one horizontal bar per measurement, from 1.0
//! (berth and the other side equal) to the ratio berth/other on a log
//! scale, coloured by what the ratio means, with the target as a tick.

use crate::report::{number, Measurement, Report};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::error::Error;
use std::path::Path;

/// Where a sans-serif font is looked for (Debian's fonts-dejavu-core),
/// unless BERTH_BENCH_FONT names one.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const GREEN: RGBColor = RGBColor(46, 160, 67);
const AMBER: RGBColor = RGBColor(224, 150, 20);
const RED: RGBColor = RGBColor(205, 55, 45);
const SHADE: RGBColor = RGBColor(243, 244, 246);
const INK: RGBColor = RGBColor(30, 30, 30);

// Sizes in pixels; text is drawn large enough that plotters' glyph
// placement (whole pixels) does not show.
const WIDTH: u32 = 1900;
const ROW: u32 = 38;
const TOP: u32 = 120;
const BOTTOM: u32 = 150;
const FONT: &str = "sans-serif";

/// Registers the font plotters draws text with (once per process).
pub fn load_font() -> Result<(), Box<dyn Error>> {
    let env = std::env::var("BERTH_BENCH_FONT").ok();
    let path = env
        .as_deref()
        .into_iter()
        .chain(FONTS.iter().copied())
        .find(|p| Path::new(p).exists())
        .ok_or("no font: install fonts-dejavu-core or set BERTH_BENCH_FONT to a .ttf file")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| format!("{path}: not a usable font"))?;
    Ok(())
}

fn colour(m: &Measurement) -> RGBColor {
    match (m.meets_target, m.beats_peer) {
        (Some(true), _) | (None, Some(true)) => GREEN,
        (Some(false), Some(true)) => AMBER,
        _ => RED,
    }
}

/// The x range: every ratio and target and 1.0, with room for the labels.
fn x_range(report: &Report) -> (f64, f64) {
    let values = report
        .results
        .iter()
        .flat_map(|m| [m.ratio, m.target])
        .flatten()
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = values.fold((1.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    ((lo / 1.8).max(1e-3), (hi * 1.8).min(1e3))
}

/// Ticks at 1, 2 and 5 times the powers of ten inside the range.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    (-3..=3)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|v| *v >= lo && *v <= hi)
        .collect()
}

/// Draws the chart of `report` into a PNG file at `path`.
pub fn draw(report: &Report, path: &Path) -> Result<(), Box<dyn Error>> {
    let n = report.results.len().max(1);
    let height = TOP + ROW * n as u32 + BOTTOM;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    draw_on(&root, report)?;
    root.present()?;
    Ok(())
}

fn draw_on(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    report: &Report,
) -> Result<(), Box<dyn Error>> {
    let text = |size: f64| TextStyle::from((FONT, size).into_font()).color(&INK);
    let label_style = text(19.0).pos(Pos::new(HPos::Right, VPos::Center));
    let label_width = report
        .results
        .iter()
        .map(|m| {
            root.estimate_text_size(&m.title(), &label_style)
                .map(|(w, _)| w)
        })
        .try_fold(0u32, |acc, w| w.map(|w| acc.max(w)))?;

    root.draw(&Text::new(
        "berth against containerd: berth's value / the other side's, one run of bench/all.sh",
        (24, 16),
        text(28.0),
    ))?;
    root.draw(&Text::new(report.machine_line(), (24, 58), text(19.0)))?;

    let n = report.results.len().max(1) as f64;
    let (lo, hi) = x_range(report);
    let mut chart = ChartBuilder::on(root)
        .margin_top(TOP - 10)
        .margin_bottom(BOTTOM - 70)
        .margin_left(label_width + 30)
        .margin_right(30)
        .x_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale().with_key_points(ticks(lo, hi)), 0.0..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|v| number(*v))
        .x_label_style(text(18.0))
        .x_desc("berth / other (log scale)")
        .axis_desc_style(text(19.0))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;

    // Row i from the top: y from n - i - 1 to n - i.
    let row = |i: usize| (n - i as f64 - 1.0, n - i as f64);
    let mut shade = false;
    let mut previous = None;
    for (i, m) in report.results.iter().enumerate() {
        if previous != Some(&m.benchmark) {
            shade = !shade;
            previous = Some(&m.benchmark);
        }
        let (y0, y1) = row(i);
        if shade {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(lo, y0), (hi, y1)],
                SHADE.filled(),
            )))?;
        }
        let (left, centre) = chart.backend_coord(&(lo, (y0 + y1) / 2.0));
        root.draw(&Text::new(
            m.title(),
            (left - 12, centre),
            label_style.clone(),
        ))?;
        let Some(ratio) = m.ratio.filter(|r| *r > 0.0) else {
            root.draw(&Text::new(
                "no ratio (a side failed)",
                (left + 8, centre),
                text(18.0)
                    .color(&RED)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
            continue;
        };
        let r = ratio.clamp(lo, hi);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(1.0, y0 + 0.18), (r, y1 - 0.18)],
            colour(m).filled(),
        )))?;
        if let Some(t) = m.target.filter(|t| *t > 0.0) {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(t, y0 + 0.05), (t, y1 - 0.05)],
                INK.stroke_width(3),
            )))?;
        }
        // The value beyond the bar's end, and beyond the target when that
        // lies just past the end (the tick would cross the text).
        let beyond = match m.target {
            Some(t) if ratio < 1.0 && t < r && t > r / 1.4 => t,
            Some(t) if ratio >= 1.0 && t > r && t < r * 1.4 => t,
            _ => r,
        };
        let (x, y) = chart.backend_coord(&(beyond, (y0 + y1) / 2.0));
        let (x, anchor) = if ratio < 1.0 {
            (x - 8, HPos::Right)
        } else {
            (x + 8, HPos::Left)
        };
        root.draw(&Text::new(
            format!("{ratio:.2}"),
            (x, y),
            text(18.0).pos(Pos::new(anchor, VPos::Center)),
        ))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, 0.0), (1.0, n)],
        INK.stroke_width(2),
    )))?;

    // The legend.
    let y = (TOP + ROW * report.results.len().max(1) as u32 + 80) as i32;
    let mut x = 24;
    for (c, what) in [
        (
            GREEN,
            "meets its target (or, without one, berth does better)",
        ),
        (AMBER, "berth does better, short of the target"),
        (RED, "berth does worse"),
    ] {
        root.draw(&Rectangle::new([(x, y), (x + 28, y + 18)], c.filled()))?;
        root.draw(&Text::new(what, (x + 36, y), text(18.0)))?;
        x += 52 + root.estimate_text_size(what, &text(18.0))?.0 as i32;
    }
    root.draw(&Rectangle::new(
        [(x + 10, y - 4), (x + 14, y + 22)],
        INK.filled(),
    ))?;
    root.draw(&Text::new("target", (x + 26, y), text(18.0)))?;
    let arrows = format!(
        "↓ lower is better (time, memory), ↑ higher is better (throughput); bars run from 1.0 (equal) to the ratio. {} measurements.",
        report.results.len()
    );
    root.draw(&Text::new(arrows, (24, y + 34), text(18.0)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_when_a_font_is_there() {
        if load_font().is_err() {
            eprintln!("no font here; skipped");
            return;
        }
        let lines = r#"
{"kind":"machine","cpu":"test CPU","cores":2}
{"kind":"result","benchmark":"a","id":"a","label":"fetch","unit":"s","berth":0.2,"peer":0.6,"better":"lower","target":1}
{"kind":"result","benchmark":"b","id":"b","label":"churn","unit":"containers/s","berth":20,"peer":11,"better":"higher","target":2}
{"kind":"result","benchmark":"b","id":"c","label":"failed","unit":"ms","berth":null,"peer":1,"better":"lower"}
"#;
        let report = Report::from_lines(lines).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("chart.png");
        draw(&report, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
