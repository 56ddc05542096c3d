//! The picture an operator looks at first: new-call table size (with the lifetime model),
//! retransmissions per second and per-backend load over virtual time, as one SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::Sample;

/// The SVG could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("plot: {0}")]
pub struct PlotError(String);

/// Draws `samples` into an SVG file at `path`, titled `title`.
pub fn draw(path: &Path, title: &str, samples: &[Sample]) -> Result<(), PlotError> {
    draw_inner(path, title, samples).map_err(|e| PlotError(e.to_string()))
}

fn draw_inner(
    path: &Path,
    title: &str,
    samples: &[Sample],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 960)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let panels = root.split_evenly((3, 1));
    let t_max = samples.last().map_or(1.0, |s| s.t_s).max(1.0);

    let series_max =
        |f: &dyn Fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0).max(1) as f64 * 1.1;

    // Table size and the lifetime model.
    let y = series_max(&|s| s.table.max(s.model));
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("new-call table entries", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..y)?;
    chart.configure_mesh().x_desc("virtual time (s)").draw()?;
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t_s, s.table as f64)),
            &BLUE,
        ))?
        .label("balancer table_len")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t_s, s.model as f64)),
            &RED.mix(0.6),
        ))?
        .label("lifetime model")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.6)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // Retransmissions per second.
    let y = series_max(&|s| s.retransmissions);
    let mut chart = ChartBuilder::on(&panels[1])
        .caption(
            "retransmissions per second (Timer A/E, 2xx)",
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..y)?;
    chart.configure_mesh().x_desc("virtual time (s)").draw()?;
    chart.draw_series(LineSeries::new(
        samples.iter().map(|s| (s.t_s, s.retransmissions as f64)),
        &MAGENTA,
    ))?;

    // Per-backend load.
    let backends = samples.iter().map(|s| s.load.len()).max().unwrap_or(0);
    let y = series_max(&|s| s.load.iter().copied().max().unwrap_or(0));
    let mut chart = ChartBuilder::on(&panels[2])
        .caption(
            "messages per second received by each backend",
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..y)?;
    chart.configure_mesh().x_desc("virtual time (s)").draw()?;
    for b in 0..backends {
        let color = Palette99::pick(b).to_rgba();
        chart
            .draw_series(LineSeries::new(
                samples
                    .iter()
                    .map(|s| (s.t_s, s.load.get(b).copied().unwrap_or(0) as f64)),
                color,
            ))?
            .label(format!("backend {b}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
