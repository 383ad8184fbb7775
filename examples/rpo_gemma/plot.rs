//! `chosen_logp.svg`: the mean chosen log-prob over training, DPO vs RPO (plotters, SVG backend; text is
//! written as SVG `<text>` elements, so no font files are needed).

use std::path::Path;

use plotters::prelude::*;

use tch_rpo::train::EvalRow;

/// Draws the `dpo` and `rpo` rows' chosen log-prob against their epoch into the SVG file `path`.
pub fn chosen_logp_svg(path: &Path, rows: &[EvalRow]) -> Result<(), Box<dyn std::error::Error>> {
    let series = |method: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.method == method && r.chosen_logp.is_finite())
            .map(|r| (r.epoch, r.chosen_logp))
            .collect()
    };
    let (dpo, rpo) = (series("dpo"), series("rpo"));
    let points = || dpo.iter().chain(rpo.iter());
    let x_max = points().map(|p| p.0).fold(0.0f64, f64::max).max(1e-6);
    let y_min = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = points().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (y_min, y_max) = if y_min.is_finite() && y_max.is_finite() {
        let pad = ((y_max - y_min) * 0.08).max(0.05);
        (y_min - pad, y_max + pad)
    } else {
        (-1.0, 0.0)
    };

    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Chosen-response log-prob during training: DPO vs RPO",
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, y_min..y_max)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("mean log p(chosen | prompt)")
        .draw()?;
    for (name, data, color) in [("DPO", &dpo, RED), ("RPO", &rpo, BLUE)] {
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
