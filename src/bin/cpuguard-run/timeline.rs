//! `--timeline FILE.svg`: load over time with the thresholds and the drain
//! moments, so that a reader sees at a glance why a recording ended.
//!
//! Samples are only collected during the run; the picture is drawn once, when
//! it ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use gstcpuguard::load::LoadSourceKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const WIDTH: u32 = 960;
const HEIGHT: u32 = 540;

const LOAD_COLOR: RGBColor = RGBColor(31, 119, 180);
const SOFT_COLOR: RGBColor = RGBColor(230, 145, 0);
const HARD_COLOR: RGBColor = RGBColor(214, 39, 40);
const DRAIN_COLOR: RGBColor = RGBColor(120, 40, 160);
/// Per-worker CPU lines (multi-pipeline mode), cycled.
const WORKER_COLORS: [RGBColor; 6] = [
    RGBColor(44, 160, 44),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The policy the lines stand for.
pub type Thresholds = gstcpuguard::policy::PolicyConfig;

struct Drain {
    at: f64,
    label: String,
}

/// What the picture shows, gathered as the run goes.
pub struct Timeline {
    path: PathBuf,
    start: Instant,
    thresholds: Thresholds,
    load: Vec<(f64, f64)>,
    source: Option<LoadSourceKind>,
    capacity: Option<f64>,
    /// Worker id → (time, CPUs as a share of capacity).
    workers: BTreeMap<u32, Vec<(f64, f64)>>,
    drains: Vec<Drain>,
}

impl Timeline {
    /// Checks now that `path` can be written, so a bad path is a usage error
    /// before anything runs rather than a lost picture at the end.
    pub fn create(path: &Path, start: Instant, thresholds: Thresholds) -> Result<Self, String> {
        std::fs::File::create(path)
            .map_err(|err| format!("cannot write timeline file {}: {err}", path.display()))?;
        Ok(Timeline {
            path: path.to_owned(),
            start,
            thresholds,
            load: Vec::new(),
            source: None,
            capacity: None,
            workers: BTreeMap::new(),
            drains: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn seconds(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }

    pub fn sample(&mut self, at: Instant, load: f64, capacity: f64, source: LoadSourceKind) {
        let t = self.seconds(at);
        self.load.push((t, load));
        self.capacity = Some(capacity);
        self.source = Some(source);
    }

    /// A worker's CPUs, drawn as a share of the capacity so it reads on the
    /// load axis: the heaviest worker is the highest line.
    pub fn worker_cpu(&mut self, at: Instant, worker: u32, cpus: f64) {
        let Some(capacity) = self.capacity.filter(|c| *c > 0.0) else {
            return;
        };
        let t = self.seconds(at);
        self.workers
            .entry(worker)
            .or_default()
            .push((t, cpus / capacity));
    }

    pub fn drain(&mut self, at: Instant, label: String) {
        let at = self.seconds(at);
        self.drains.push(Drain { at, label });
    }

    /// Draws the picture; `outcome` ends the title ("CPU limit reached (cpu-limit)").
    pub fn write(&self, outcome: &str, ended: Instant) -> Result<(), String> {
        self.draw(outcome, self.seconds(ended))
            .map_err(|err| format!("cannot write timeline {}: {err}", self.path.display()))
    }

    fn draw(&self, outcome: &str, end: f64) -> Result<(), Box<dyn std::error::Error>> {
        let th = self.thresholds;
        let x_max = self
            .load
            .iter()
            .map(|(t, _)| *t)
            .chain(self.drains.iter().map(|d| d.at))
            .fold(end, f64::max)
            .max(1.0);
        let peak = self
            .load
            .iter()
            .chain(self.workers.values().flatten())
            .map(|(_, v)| *v)
            .fold(th.hard, f64::max);
        // The data, then a band above it for the drain labels: a label never
        // lies on the threshold lines or the load.
        let data_top = (peak * 1.05).max(1.0);
        let label_row = data_top * 0.08;
        let y_max = data_top + label_row * 4.5;

        // The legend goes under the plot, in a strip of its own, so it
        // covers no line.
        let entries = 3 + self.workers.len();
        let legend_rows = entries.div_ceil(2) as u32;
        let root =
            SVGBackend::new(&self.path, (WIDTH, HEIGHT + 22 * legend_rows)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot_area, legend_area) = root.split_vertically(HEIGHT);
        let title = format!("cpuguard-run: {outcome}");
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max)?;
        let capacity = match (&self.source, self.capacity) {
            (Some(source), Some(cpus)) => {
                format!("load ({source}, share of {cpus:.2} CPUs)")
            }
            _ => "load (share of capacity)".to_owned(),
        };
        chart
            .configure_mesh()
            .x_desc("time since start (s)")
            .y_desc(capacity)
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;

        let hline = |y: f64| vec![(0.0, y), (x_max * 1.02, y)];
        let mut legend: Vec<(String, RGBColor, u32)> = Vec::new();
        chart.draw_series(LineSeries::new(hline(th.hard), HARD_COLOR.stroke_width(2)))?;
        legend.push((
            format!("hard threshold {} (drains at once)", th.hard),
            HARD_COLOR,
            2,
        ));
        let release = if th.release > 1 {
            format!(", release {}", th.release)
        } else {
            String::new()
        };
        chart.draw_series(LineSeries::new(hline(th.soft), SOFT_COLOR.stroke_width(2)))?;
        legend.push((
            format!(
                "soft threshold {} (drains after hold {}{release})",
                th.soft, th.hold
            ),
            SOFT_COLOR,
            2,
        ));

        for (i, (worker, points)) in self.workers.iter().enumerate() {
            let color = WORKER_COLORS[i % WORKER_COLORS.len()];
            chart.draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(1),
            ))?;
            legend.push((format!("worker {worker} CPU (share of capacity)"), color, 1));
        }

        chart.draw_series(LineSeries::new(
            self.load.iter().copied(),
            LOAD_COLOR.stroke_width(3),
        ))?;
        legend.push(("load".to_owned(), LOAD_COLOR, 3));
        chart.draw_series(
            self.load
                .iter()
                .map(|&(t, l)| Circle::new((t, l), 3, LOAD_COLOR.filled())),
        )?;

        for (i, drain) in self.drains.iter().enumerate() {
            chart.draw_series(LineSeries::new(
                [(drain.at, 0.0), (drain.at, y_max)],
                DRAIN_COLOR.stroke_width(2),
            ))?;
            // Staggered, so that drains close together stay readable; on the
            // right half the label ends at the line instead of leaving the plot.
            let row = (i % 4) as f64;
            let top = y_max - label_row * (0.2 + row);
            let hpos = if drain.at > x_max * 0.55 {
                HPos::Right
            } else {
                HPos::Left
            };
            let style = ("sans-serif", 14)
                .into_font()
                .color(&DRAIN_COLOR)
                .pos(Pos::new(hpos, VPos::Top));
            chart.draw_series(std::iter::once(Text::new(
                format!(" {} ", drain.label),
                (drain.at, top),
                style,
            )))?;
        }

        // Two entries a row, each a sample of its line and its text.
        for (i, (text, color, width)) in legend.iter().enumerate() {
            let x = 72 + (i as i32 % 2) * 440;
            let y = 10 + (i as i32 / 2) * 22;
            legend_area.draw(&PathElement::new(
                [(x, y), (x + 24, y)],
                color.stroke_width(*width),
            ))?;
            legend_area.draw(&Text::new(
                text.clone(),
                (x + 32, y - 7),
                ("sans-serif", 13).into_font(),
            ))?;
        }
        root.present()?;
        Ok(())
    }
}
