//! The plot: throughput and p99 latency against concurrency, as a PNG.

use std::path::Path;

use super::model::RunResult;
use super::{Commit, Durability};

fn register_font() -> bool {
    let mut candidates: Vec<String> = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Ok(out) = std::process::Command::new("fc-match")
        .args(["--format=%{file}", "sans-serif"])
        .output()
        && out.status.success()
    {
        candidates.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                bytes,
            )
            .is_ok()
            {
                return true;
            }
        }
    }
    false
}

type Series = (String, plotters::style::RGBColor, Vec<(f64, f64)>);

/// Throughput and p99 against concurrency (log2 x axis) as a PNG.
pub(crate) fn plot(results: &[RunResult], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    anyhow::ensure!(
        register_font(),
        "no TrueType font found (install fonts-dejavu-core)"
    );
    let pick = |pred: &dyn Fn(&RunResult) -> bool| {
        let mut v: Vec<&RunResult> = results.iter().filter(|r| pred(r)).collect();
        v.sort_by_key(|r| r.concurrency);
        v
    };
    let lines: Vec<(String, RGBColor, Vec<&RunResult>)> = vec![
        (
            "AllData RF=3 QUORUM buffered".into(),
            RGBColor(31, 119, 180),
            pick(&|r| {
                r.batch == 1 && r.is(3, Commit::Quorum, Durability::Buffered, 1, r.concurrency)
            }),
        ),
        (
            "AllData RF=3 QUORUM sync".into(),
            RGBColor(214, 39, 40),
            pick(&|r| r.batch == 1 && r.is(3, Commit::Quorum, Durability::Sync, 1, r.concurrency)),
        ),
        (
            "fanout baseline".into(),
            RGBColor(44, 160, 44),
            pick(&|r| r.system == "fanout" && r.batch == 1),
        ),
        (
            "null baseline".into(),
            RGBColor(127, 127, 127),
            pick(&|r| r.system == "null" && r.batch == 1),
        ),
    ];
    let series = |metric: fn(&RunResult) -> f64| -> Vec<Series> {
        lines
            .iter()
            .filter(|(_, _, v)| !v.is_empty())
            .map(|(name, color, v)| {
                let pts = v
                    .iter()
                    .map(|r| ((r.concurrency as f64).log2(), metric(r)))
                    .collect();
                (name.clone(), *color, pts)
            })
            .collect()
    };
    let panels: [(&str, &str, Vec<Series>); 2] = [
        ("Throughput", "events/s", series(|r| r.events_per_sec)),
        ("p99 latency", "ms", series(|r| r.latency_ms.p99)),
    ];
    let max_x = results
        .iter()
        .map(|r| (r.concurrency as f64).log2())
        .fold(1.0f64, f64::max);

    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let halves = root.split_evenly((1, 2));
    for (area, (title, unit, data)) in halves.iter().zip(panels) {
        let max_y = data
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
            .fold(0.0f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 26))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.2f64..max_x + 0.2, 0f64..max_y.max(1e-3))?;
        chart
            .configure_mesh()
            .x_desc("concurrency (requests in flight)")
            .y_desc(unit)
            .x_labels(((max_x + 0.4) as usize) + 1)
            .x_label_formatter(&|x| format!("{}", 2f64.powf(x.round()).round()))
            .y_label_formatter(&|y| {
                if *y >= 1000.0 {
                    format!("{:.0}k", y / 1000.0)
                } else if *y >= 10.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.1}")
                }
            })
            .label_style(("sans-serif", 16))
            .draw()?;
        for (name, color, pts) in data {
            let style = color.stroke_width(3);
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 5, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
