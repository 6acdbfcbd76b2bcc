//! Line charts (plotters, SVG): one line per series over numeric x values, optionally with a
//! logarithmic y axis, each with a CSV of exactly the numbers drawn.

use super::Result;
use super::chart::{save_with_csv, table_csv};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One chart's data.
#[derive(Debug, Clone)]
pub struct Lines {
    /// Title.
    pub title: String,
    /// What x is (e.g. "resident budget, % of the working set").
    pub x_label: String,
    /// What y is.
    pub y_label: String,
    /// The x values, in the order drawn.
    pub xs: Vec<f64>,
    /// Series name and one y value per x (NaN: not measured).
    pub series: Vec<(String, Vec<f64>)>,
    /// A logarithmic y axis (values span orders of magnitude).
    pub log_y: bool,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
];

impl Lines {
    /// The CSV: a header `x_label,series...`, then one row per x.
    pub fn csv(&self) -> String {
        let xs: Vec<String> = self.xs.iter().map(|x| x.to_string()).collect();
        table_csv(&self.x_label, &xs, &self.series)
    }

    /// Writes `dir/stem.svg` and `dir/stem.csv`; returns both paths.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
        save_with_csv(dir, stem, |p| self.draw(p), &self.csv())
    }

    fn draw(&self, path: &Path) -> std::result::Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let ys = || {
            self.series
                .iter()
                .flat_map(|(_, v)| v.iter().copied())
                .filter(|v| v.is_finite() && (!self.log_y || *v > 0.0))
        };
        let top = ys().fold(f64::MIN, f64::max).max(1.0);
        let bottom = ys().fold(f64::MAX, f64::min).min(top);
        let (x0, x1) = self
            .xs
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let (x0, x1) = if x0 < x1 { (x0, x1) } else { (0.0, 1.0) };
        let pad = (x1 - x0) * 0.05;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70);
        let style = |name: &str, s: usize| (name.to_string(), COLORS[s % COLORS.len()]);
        macro_rules! draw_on {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(&self.x_label)
                    .y_desc(&self.y_label)
                    .draw()
                    .map_err(|x| e(&x))?;
                for (s, (name, values)) in self.series.iter().enumerate() {
                    let (name, color) = style(name, s);
                    let points: Vec<(f64, f64)> = self
                        .xs
                        .iter()
                        .zip(values)
                        .filter(|(_, v)| v.is_finite() && (!self.log_y || **v > 0.0))
                        .map(|(x, v)| (*x, *v))
                        .collect();
                    chart
                        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                        .map_err(|x| e(&x))?
                        .label(name)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                        .map_err(|x| e(&x))?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::LowerRight)
                    .draw()
                    .map_err(|x| e(&x))?;
            }};
        }
        if self.log_y {
            draw_on!(
                builder
                    .build_cartesian_2d(
                        (x0 - pad)..(x1 + pad),
                        ((bottom / 2.0).max(1e-9)..top * 2.0).log_scale()
                    )
                    .map_err(|x| e(&x))?
            );
        } else {
            draw_on!(
                builder
                    .build_cartesian_2d((x0 - pad)..(x1 + pad), 0f64..top * 1.15)
                    .map_err(|x| e(&x))?
            );
        }
        root.present().map_err(|x| e(&x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_numbers_it_draws() {
        let l = Lines {
            title: "t".into(),
            x_label: "budget %".into(),
            y_label: "ops/s".into(),
            xs: vec![100.0, 50.0],
            series: vec![
                ("memout".into(), vec![1000.0, 10.0]),
                ("kernel".into(), vec![900.0, f64::NAN]),
            ],
            log_y: true,
        };
        assert_eq!(
            l.csv(),
            "budget %,memout,kernel\n100,1000.000,900.000\n50,10.000,NaN\n"
        );
        let dir = std::env::temp_dir().join(format!("memout-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = l.save(&dir, "c").unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("memout"), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
