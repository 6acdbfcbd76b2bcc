//! Grouped bar charts like the seed papers' (one group per x category, one bar per series),
//! drawn as SVG with plotters, each with a CSV of exactly the numbers drawn.

use super::{Error, Result, write};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One chart's data.
#[derive(Debug, Clone)]
pub struct Bars {
    /// Title.
    pub title: String,
    /// What the x categories are (e.g. "guests").
    pub x_label: String,
    /// What the values are (e.g. "host memory used by the guests, MiB").
    pub y_label: String,
    /// The categories, in order.
    pub categories: Vec<String>,
    /// Series name and one value per category.
    pub series: Vec<(String, Vec<f64>)>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
];

/// A CSV of what a chart draws: a header `x_label,series...`, then one row per x with each
/// series' value (NaN where a series has none).
pub(super) fn table_csv(x_label: &str, xs: &[String], series: &[(String, Vec<f64>)]) -> String {
    let mut s = x_label.replace(',', ";");
    for (name, _) in series {
        s.push(',');
        s.push_str(&name.replace(',', ";"));
    }
    s.push('\n');
    for (i, x) in xs.iter().enumerate() {
        s.push_str(&x.replace(',', ";"));
        for (_, v) in series {
            s.push_str(&format!(",{:.3}", v.get(i).copied().unwrap_or(f64::NAN)));
        }
        s.push('\n');
    }
    s
}

/// Draws `dir/stem.svg` with `draw` and writes `csv` to `dir/stem.csv`; returns both paths.
pub(super) fn save_with_csv(
    dir: &Path,
    stem: &str,
    draw: impl FnOnce(&Path) -> std::result::Result<(), String>,
    csv: &str,
) -> Result<Vec<PathBuf>> {
    let svg = dir.join(format!("{stem}.svg"));
    draw(&svg).map_err(|message| Error::Chart {
        path: svg.clone(),
        message,
    })?;
    let csv = write(dir, &format!("{stem}.csv"), csv)?;
    Ok(vec![svg, csv])
}

impl Bars {
    /// The CSV: a header `x_label,series...`, then one row per category.
    pub fn csv(&self) -> String {
        table_csv(&self.x_label, &self.categories, &self.series)
    }

    /// Writes `dir/stem.svg` and `dir/stem.csv`; returns both paths.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
        save_with_csv(dir, stem, |p| self.draw(p), &self.csv())
    }

    fn draw(&self, path: &Path) -> std::result::Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let top = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.15;
        let n = self.categories.len().max(1);
        let cats = self.categories.clone();
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64, 0f64..top)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.26 && i < cats.len() {
                    cats[i].clone()
                } else {
                    String::new()
                }
            })
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .draw()
            .map_err(|x| e(&x))?;
        let k = self.series.len().max(1) as f64;
        let width = 0.8 / k;
        for (s, (name, values)) in self.series.iter().enumerate() {
            let color = COLORS[s % COLORS.len()];
            let left = |i: usize| i as f64 + 0.1 + s as f64 * width;
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(i, v)| {
                            Rectangle::new(
                                [(left(i), 0.0), (left(i) + width * 0.95, *v)],
                                color.filled(),
                            )
                        }),
                )
                .map_err(|x| e(&x))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_numbers_it_draws() {
        let b = Bars {
            title: "t".into(),
            x_label: "guests".into(),
            y_label: "MiB".into(),
            categories: vec!["1".into(), "2".into()],
            series: vec![
                ("off".into(), vec![10.0, 20.0]),
                ("on".into(), vec![10.0, 11.5]),
            ],
        };
        assert_eq!(b.csv(), "guests,off,on\n1,10.000,10.000\n2,20.000,11.500\n");
        let dir = std::env::temp_dir().join(format!("memout-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = b.save(&dir, "c").unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains(">\noff\n</text>"),
            "{svg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
