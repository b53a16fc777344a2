//! Plots of a suite run, as SVG and PNG: for every scenario with
//! latencies, the percentile distribution (the x axis is `1/(1-q)` on a
//! log scale, labelled as percentiles, as HdrHistogram's plotter draws
//! it), one line per backend; and throughput bars per backend for the
//! frame-rate, call-rate and byte-rate scenarios.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::pair::Backend;
use crate::scenarios::Measurement;
use crate::suite::by_scenario;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 520;

fn colour(backend: Backend) -> RGBColor {
    match backend {
        Backend::RawXdp => RGBColor(90, 90, 90),
        Backend::Xdp => RGBColor(31, 119, 180),
        Backend::Udp => RGBColor(214, 39, 40),
        Backend::RawUdp => RGBColor(240, 160, 150),
    }
}

/// PNG text needs a font file: DejaVu Sans from Debian's
/// `fonts-dejavu-core` (installed by scripts/setup).
fn register_font() -> Result<(), String> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font_bytes(bytes)
}

fn register_font_bytes(bytes: &'static [u8]) -> Result<(), String> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| "the font does not load".to_owned())
}

/// Picks the value a throughput chart shows, if the measurement has one.
type Pick = fn(&Measurement) -> Option<f64>;

/// Every plot of `results` into `dir`.
pub fn all(dir: &Path, results: &[Measurement]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    register_font()?;
    for (name, group) in by_scenario(results) {
        if group
            .iter()
            .any(|m| m.latency.as_ref().is_some_and(|h| !h.is_empty()))
        {
            both(
                dir,
                &format!("latency_{name}"),
                &Plot::Latency(name, &group),
            )?;
        }
    }
    let families: [(&str, &str, Pick); 3] = [
        ("throughput_frames", "frames per second", |m| m.frames_per_s),
        ("throughput_calls", "calls per second", |m| {
            m.ops_per_s
                .filter(|_| m.name.starts_with("rpc_throughput") || m.name.starts_with("payload_"))
        }),
        ("throughput_bytes", "bytes per second", |m| {
            m.bytes_per_s.filter(|_| m.name.starts_with("rom_update"))
        }),
    ];
    for (file, unit, value) in families {
        let rows: Vec<(&Measurement, f64)> = results
            .iter()
            .filter_map(|m| Some((m, value(m)?)))
            .collect();
        if !rows.is_empty() {
            both(dir, file, &Plot::Bars(unit, &rows))?;
        }
    }
    Ok(())
}

/// One chart.
enum Plot<'a> {
    /// The percentile distribution of a scenario, a line per backend.
    Latency(&'a str, &'a [&'a Measurement]),
    /// Throughput bars in a unit.
    Bars(&'a str, &'a [(&'a Measurement, f64)]),
}

impl Plot<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        match self {
            Plot::Latency(name, group) => latency(area, name, group),
            Plot::Bars(unit, rows) => bars(area, unit, rows),
        }
    }
}

/// Draws `plot` into `<dir>/<file>.svg` and `.png`.
fn both(dir: &Path, file: &str, plot: &Plot<'_>) -> Result<(), String> {
    let svg = dir.join(format!("{file}.svg"));
    let png = dir.join(format!("{file}.png"));
    {
        let area = SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area();
        plot.draw(&area)?;
        area.present()
            .map_err(|e| format!("{}: {e}", svg.display()))?;
    }
    let area = BitMapBackend::new(&png, (WIDTH, HEIGHT)).into_drawing_area();
    plot.draw(&area)?;
    area.present()
        .map_err(|e| format!("{}: {e}", png.display()))
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p < 0.5 {
        "0%".into()
    } else if (p - p.round()).abs() < 1e-6 {
        format!("{p:.0}%")
    } else {
        let text = format!("{p:.5}");
        format!("{}%", text.trim_end_matches('0'))
    }
}

fn latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    name: &str,
    group: &[&Measurement],
) -> Result<(), String> {
    let fail = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    area.fill(&WHITE).map_err(fail)?;
    let lines: Vec<(Backend, Vec<(f64, f64)>)> = group
        .iter()
        .filter_map(|m| {
            let h = m.latency.as_ref().filter(|h| !h.is_empty())?;
            let points = h
                .iter_quantiles(5)
                .filter(|v| v.quantile_iterated_to() < 1.0)
                .map(|v| {
                    (
                        1.0 / (1.0 - v.quantile_iterated_to()),
                        v.value_iterated_to().max(1) as f64 / 1000.0,
                    )
                })
                .collect();
            Some((m.backend, points))
        })
        .collect();
    let x_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(10.0f64, f64::max)
        .min(1e6);
    let (y_min, y_max) = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold((f64::MAX, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{name}: latency by percentile"), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (1.0f64..x_max).log_scale(),
            ((y_min * 0.8).max(0.01)..y_max * 1.25).log_scale(),
        )
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(fail)?;
    for (backend, points) in lines {
        let style = colour(backend).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(fail)?
            .label(backend.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(fail)?;
    Ok(())
}

/// `1.2M`, `640k`: axis labels that stay short.
fn short(value: f64) -> String {
    if value >= 1e9 {
        format!("{:.1}G", value / 1e9)
    } else if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    unit: &str,
    rows: &[(&Measurement, f64)],
) -> Result<(), String> {
    let fail = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    area.fill(&WHITE).map_err(fail)?;
    let mut names: Vec<&str> = Vec::new();
    for (m, _) in rows {
        if !names.contains(&m.name.as_str()) {
            names.push(&m.name);
        }
    }
    // The backends with a bar here, in a fixed order.
    let backends: Vec<Backend> = [Backend::RawXdp, Backend::Xdp, Backend::Udp, Backend::RawUdp]
        .into_iter()
        .filter(|b| rows.iter().any(|(m, _)| m.backend == *b))
        .collect();
    let top = rows.iter().map(|r| r.1).fold(0.0f64, f64::max) * 1.15;
    let count = names.len();
    let mut chart = ChartBuilder::on(area)
        .caption(format!("throughput: {unit}"), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0f64..count as f64, 0.0f64..top.max(1.0))
        .map_err(fail)?;
    let labels = names.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(count * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor();
            let index = format!("{i:.0}").parse::<usize>().ok();
            match index {
                Some(index) if (x - i - 0.5).abs() < 0.26 => labels
                    .get(index)
                    .map(|s| (*s).to_owned())
                    .unwrap_or_default(),
                _ => String::new(),
            }
        })
        .y_desc(unit)
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(fail)?;
    let width = 0.8 / backends.len().max(1) as f64;
    for (b, backend) in backends.iter().enumerate() {
        let bars: Vec<Rectangle<(f64, f64)>> = rows
            .iter()
            .filter(|(m, _)| m.backend == *backend)
            .filter_map(|(m, value)| {
                let i = names.iter().position(|n| *n == m.name)? as f64;
                let left = i + 0.1 + b as f64 * width;
                Some(Rectangle::new(
                    [(left, 0.0), (left + width * 0.9, *value)],
                    colour(*backend).filled(),
                ))
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        let style = colour(*backend).filled();
        chart
            .draw_series(bars)
            .map_err(fail)?
            .label(backend.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(fail)?;
    Ok(())
}
