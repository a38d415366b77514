//! PNG plots of a suite: one panel per metric, a bar per variant at its median with a whisker
//! from min to max, so the spread of a noisy VM is visible next to the ratio.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::report::{fmt_value, SuiteReport};

/// Where Debian's fonts-dejavu-core puts the font the plots use.
const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Draws `report` into `path`. Does nothing when the report has no metric.
pub fn draw(report: &SuiteReport, path: &Path) -> Result<()> {
    let metrics: Vec<_> = report
        .metrics
        .iter()
        .filter(|m| !m.variants.is_empty())
        .collect();
    if metrics.is_empty() {
        return Ok(());
    }
    register_font()?;
    let panel_height = 220u32;
    let root = BitMapBackend::new(path, (960, panel_height * metrics.len() as u32 + 40))
        .into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.titled(
        &format!(
            "{} suite ({} mode): median, whiskers min..max",
            report.suite, report.mode
        ),
        ("sans-serif", 20),
    )?;
    let panels = body.split_evenly((metrics.len(), 1));
    for (metric, panel) in metrics.into_iter().zip(panels) {
        let top = metric
            .variants
            .iter()
            .filter_map(|v| v.summary.map(|s| s.max))
            .fold(0.0f64, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.15;
        let bands = metric.variants.len() as f64;
        let mut chart = ChartBuilder::on(&panel)
            .caption(
                format!("{} ({})", metric.name, metric.unit),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(20)
            .y_label_area_size(0)
            .build_cartesian_2d(0.0..top, 0.0..bands)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(6)
            .x_label_formatter(&|x| fmt_value(*x))
            .draw()?;
        // Each variant gets one horizontal band, first variant on top: its name, then its bar.
        for (i, variant) in metric.variants.iter().enumerate() {
            let band = bands - 1.0 - i as f64;
            let label = match (variant.summary, variant.ratio) {
                (Some(s), Some(r)) if variant.name != metric.baseline => {
                    format!(
                        "{}: {} ({r:.2}x baseline)",
                        variant.name,
                        fmt_value(s.median)
                    )
                }
                (Some(s), _) => format!("{}: {}", variant.name, fmt_value(s.median)),
                (None, _) => format!("{}: failed", variant.name),
            };
            chart.draw_series(std::iter::once(Text::new(
                label,
                (0.0, band + 0.95),
                ("sans-serif", 14),
            )))?;
            let Some(summary) = variant.summary else {
                continue;
            };
            let color = Palette99::pick(i).mix(0.8);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, band + 0.1), (summary.median, band + 0.6)],
                color.filled(),
            )))?;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(summary.min, band + 0.35), (summary.max, band + 0.35)],
                BLACK.stroke_width(2),
            )))?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT_FILE)
        .with_context(|| format!("reading {FONT_FILE} for plot labels; install fonts-dejavu-core (scripts/setup.sh does)"))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT_FILE} is not a usable TrueType font"))?;
    let _ = REGISTERED.set(true);
    Ok(())
}
