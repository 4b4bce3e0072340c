//! Results: one measurement per `Record`, a readable table, JSON, and for `bench peers`
//! the medians, the ratios (median of per-repetition ratios) and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Better {
    Higher,
    Lower,
}

/// One figure: a case (what was run), a metric (what was measured) and its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) case: String,
    pub(crate) metric: String,
    pub(crate) value: f64,
    pub(crate) better: Better,
    /// The raw counts behind the value (bytes, seconds, datagrams sent and received...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub(crate) detail: serde_json::Value,
}

impl Record {
    pub(crate) fn new(case: impl Into<String>, metric: &str, value: f64, better: Better) -> Self {
        Record {
            case: case.into(),
            metric: metric.into(),
            value,
            better,
            detail: serde_json::Value::Null,
        }
    }

    pub(crate) fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// What one `ferrosocks bench SCENARIO` run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunReport {
    pub(crate) target: String,
    pub(crate) records: Vec<Record>,
}

impl RunReport {
    pub(crate) fn new(target: String, records: Vec<Record>) -> Self {
        RunReport { target, records }
    }

    pub(crate) fn table(&self) -> String {
        let mut rows = vec![vec![
            "case".to_string(),
            "metric".into(),
            self.target.clone(),
        ]];
        for r in &self.records {
            rows.push(vec![r.case.clone(), r.metric.clone(), fmt_value(r.value)]);
        }
        render(&rows, 2)
    }

    pub(crate) fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        write_json(path, self)
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Three significant-ish figures: 23.4, 187, 0.61, 12345.
pub(crate) fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A table with the first `left` columns left-aligned and the rest right-aligned.
fn render(rows: &[Vec<String>], left: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            if c > 0 {
                line.push_str("  ");
            }
            if c < left {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if i == 0 {
            let total = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Side by side

/// One row of the summary: one metric of one case, for every contender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) case: String,
    pub(crate) metric: String,
    pub(crate) better: Better,
    /// Contender → the value of each repetition (`None`: failed or not applicable).
    pub(crate) reps: BTreeMap<String, Vec<Option<f64>>>,
    /// Contender → the median over its successful repetitions.
    pub(crate) median: BTreeMap<String, Option<f64>>,
    /// Contender → median over repetitions of (contender / direct) in the same repetition.
    pub(crate) vs_direct: BTreeMap<String, Option<f64>>,
    /// Peer → median over repetitions of (ferrosocks / peer) in the same repetition.
    pub(crate) ferrosocks_vs: BTreeMap<String, Option<f64>>,
    /// Contender → why it has no value (the first error seen), e.g. "SOCKS handshake: …
    /// REP 0x07", or one starting with [`NOT_APPLICABLE`] for a case it was not run in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) errors: BTreeMap<String, String>,
}

pub(crate) fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Median of the per-repetition ratios a[i] / b[i], over repetitions where both exist.
pub(crate) fn median_ratio(a: &[Option<f64>], b: &[Option<f64>]) -> Option<f64> {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) if *y != 0.0 => Some(x / y),
            _ => None,
        })
        .collect();
    median(&r)
}

impl Row {
    pub(crate) fn new(case: &str, metric: &str, better: Better) -> Row {
        Row {
            case: case.into(),
            metric: metric.into(),
            better,
            reps: BTreeMap::new(),
            median: BTreeMap::new(),
            vs_direct: BTreeMap::new(),
            ferrosocks_vs: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// Fills the medians and ratios from `reps`.
    pub(crate) fn summarize(&mut self, contenders: &[String]) {
        let none = Vec::new();
        let direct = self.reps.get("direct").cloned().unwrap_or_default();
        let ferro = self.reps.get("ferrosocks").cloned().unwrap_or_default();
        for c in contenders {
            let vals = self.reps.get(c).unwrap_or(&none);
            let ok: Vec<f64> = vals.iter().flatten().copied().collect();
            self.median.insert(c.clone(), median(&ok));
            if c != "direct" {
                self.vs_direct
                    .insert(c.clone(), median_ratio(vals, &direct));
            }
            if c != "direct" && c != "ferrosocks" {
                self.ferrosocks_vs
                    .insert(c.clone(), median_ratio(&ferro, vals));
            }
        }
    }
}

fn cell(v: Option<f64>, err: Option<&String>) -> String {
    match v {
        Some(v) => fmt_value(v),
        None if err.is_some() => "n/a".into(),
        None => "-".into(),
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.2}x"))
}

/// The side-by-side table: medians, then ratios to direct, then ferrosocks to each peer.
pub(crate) fn peers_table(rows: &[Row], contenders: &[String]) -> String {
    let peers: Vec<&String> = contenders
        .iter()
        .filter(|c| *c != "direct" && *c != "ferrosocks")
        .collect();
    let proxies: Vec<&String> = contenders.iter().filter(|c| *c != "direct").collect();
    let mut head = vec!["case".to_string(), "metric".into(), "better".into()];
    head.extend(contenders.iter().cloned());
    head.extend(proxies.iter().map(|p| format!("{p}/direct")));
    head.extend(peers.iter().map(|p| format!("ferro/{p}")));
    let mut t = vec![head];
    for r in rows {
        let mut line = vec![
            r.case.clone(),
            r.metric.clone(),
            match r.better {
                Better::Higher => "higher".into(),
                Better::Lower => "lower".into(),
            },
        ];
        for c in contenders {
            line.push(cell(r.median.get(c).copied().flatten(), r.errors.get(c)));
        }
        for p in &proxies {
            line.push(ratio(r.vs_direct.get(*p).copied().flatten()));
        }
        for p in &peers {
            line.push(ratio(r.ferrosocks_vs.get(*p).copied().flatten()));
        }
        t.push(line);
    }
    render(&t, 3)
}

// ---------------------------------------------------------------------------------------
// Chart

/// Each contender keeps its colour whichever others run beside it.
fn color_of(contender: &str, contenders: &[String]) -> RGBColor {
    match contender {
        "direct" => RGBColor(140, 140, 140),
        "dante" => RGBColor(214, 120, 40),
        "microsocks" => RGBColor(70, 140, 190),
        "haproxy" => RGBColor(90, 160, 90),
        "nginx" => RGBColor(200, 170, 60),
        "bare-udp" => RGBColor(60, 170, 170),
        "ferrosocks" => RGBColor(190, 60, 60),
        _ => {
            const OTHERS: [RGBColor; 2] = [RGBColor(150, 110, 180), RGBColor(80, 80, 80)];
            let i = contenders.iter().position(|c| c == contender).unwrap_or(0);
            OTHERS[i % OTHERS.len()]
        }
    }
}

/// How a skipped measurement's error starts: recorded, drawn as nothing, and no failure.
pub(crate) const NOT_APPLICABLE: &str = "not applicable";

/// One bar of the chart.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bar {
    Value(f64),
    /// Measured and failed: labelled "n/a".
    Failed,
    /// Not run for this contender (a forwarder has no SOCKS): left empty.
    Skipped,
}

impl Bar {
    fn of(row: &Row, contender: &str, value: Option<f64>) -> Bar {
        match value {
            Some(v) => Bar::Value(v),
            None if row
                .errors
                .get(contender)
                .is_some_and(|e| e.starts_with(NOT_APPLICABLE)) =>
            {
                Bar::Skipped
            }
            None => Bar::Failed,
        }
    }

    fn value(self) -> Option<f64> {
        match self {
            Bar::Value(v) => Some(v),
            Bar::Failed | Bar::Skipped => None,
        }
    }
}

struct Panel<'a> {
    title: &'a str,
    groups: Vec<String>,
    /// (contender, bar per group); a contender skipped in every group has no series.
    series: Vec<(String, Vec<Bar>)>,
    /// A reference line (the direct level for ratios), named in the title: a label on
    /// the line would cover the value of any bar that reaches it.
    reference: Option<f64>,
}

/// Draws the chart of a side-by-side run: ratios to direct for the rates, microseconds for
/// latencies, KiB per idle tunnel. Text is plain SVG `<text>`, so no font files are needed.
pub(crate) fn chart(
    path: &Path,
    title: &str,
    rows: &[Row],
    contenders: &[String],
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let proxies: Vec<String> = contenders
        .iter()
        .filter(|c| *c != "direct")
        .cloned()
        .collect();
    let pick =
        |pred: &dyn Fn(&Row) -> bool| -> Vec<&Row> { rows.iter().filter(|r| pred(r)).collect() };
    let rates = ratio_rows(rows);
    let lat = pick(&|r| r.metric.ends_with("µs"));
    let mem = pick(&|r| {
        r.case.starts_with("idle")
            && r.metric.contains("KiB/tunnel")
            && !r.metric.starts_with("generator")
    });

    let label = |r: &Row| -> String {
        if r.better == Better::Higher {
            format!("{} {}", r.case, r.metric)
        } else {
            format!(
                "{} {}",
                r.case,
                r.metric.replace(" KiB/tunnel", "").replace(" µs", "")
            )
        }
    };
    let rate_panel = Panel {
        title: "throughput and rates: ratio to direct, the line at 1 (higher is better)",
        groups: rates.iter().map(|r| label(r)).collect(),
        series: series(&rates, &proxies, |r, p| {
            r.vs_direct.get(p).copied().flatten()
        }),
        reference: Some(1.0),
    };
    let by_median =
        |rs: &[&Row], who: &[String]| series(rs, who, |r, c| r.median.get(c).copied().flatten());
    let lat_panel = Panel {
        title: "latency, µs (lower is better)",
        groups: lat.iter().map(|r| label(r)).collect(),
        series: by_median(&lat, contenders),
        reference: None,
    };
    let mem_panel = Panel {
        title: "idle tunnel memory, KiB per tunnel (lower is better)",
        groups: mem.iter().map(|r| label(r)).collect(),
        series: by_median(&mem, contenders),
        reference: None,
    };

    let root = SVGBackend::new(path, (1600, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = root.titled(title, ("sans-serif", 20))?;
    let (left, rest) = body.split_horizontally(640);
    let (mid, right) = rest.split_horizontally(500);
    draw_panel(&left, &rate_panel, contenders)?;
    draw_panel(&mid, &lat_panel, contenders)?;
    draw_panel(&right, &mem_panel, contenders)?;
    root.present()?;
    Ok(())
}

/// The rows the chart draws as ratios to direct: rates, but not the idle case's counts,
/// and not a row direct cannot run (sessions to a name: it has no proxy to resolve it),
/// which would have nothing to draw there; the table has its figures.
fn ratio_rows(rows: &[Row]) -> Vec<&Row> {
    let direct_runs = |r: &Row| {
        !r.errors
            .get("direct")
            .is_some_and(|e| e.starts_with(NOT_APPLICABLE))
    };
    rows.iter()
        .filter(|r| r.better == Better::Higher && !r.case.starts_with("idle") && direct_runs(r))
        .collect()
}

/// One series per contender that has a bar to draw or a failure to show in `rows`.
fn series(
    rows: &[&Row],
    who: &[String],
    value: impl Fn(&Row, &str) -> Option<f64>,
) -> Vec<(String, Vec<Bar>)> {
    who.iter()
        .map(|c| {
            let bars: Vec<Bar> = rows.iter().map(|r| Bar::of(r, c, value(r, c))).collect();
            (c.clone(), bars)
        })
        .filter(|(_, bars)| bars.iter().any(|b| *b != Bar::Skipped))
        .collect()
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: &Panel<'_>,
    contenders: &[String],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let n = p.groups.len().max(1);
    let top = p
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().filter_map(|b| b.value()))
        .chain(p.reference)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.18;
    // The band below zero holds the group labels, inside the plot so nothing is clipped.
    let band = top * 0.16;
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, ("sans-serif", 15))
        .margin(12)
        .y_label_area_size(48)
        .x_label_area_size(4)
        .build_cartesian_2d(0f64..n as f64, -band..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|y| {
            if *y < 0.0 {
                String::new()
            } else {
                fmt_value(*y)
            }
        })
        .light_line_style(WHITE)
        .draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 0.0), (n as f64, 0.0)],
        BLACK,
    )))?;
    if let Some(v) = p.reference {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, v), (n as f64, v)],
            BLACK.mix(0.6).stroke_width(1),
        )))?;
    }
    let k = p.series.len().max(1) as f64;
    let slot = 0.8 / k;
    for (si, (who, vals)) in p.series.iter().enumerate() {
        let color = color_of(who, contenders);
        let x0 = |gi: usize| gi as f64 + 0.1 + si as f64 * slot;
        let bars = vals.iter().enumerate().filter_map(|(gi, v)| {
            // A negative figure (memory freed by others meanwhile) is printed, not drawn
            // into the label band.
            v.value().map(|v| {
                Rectangle::new(
                    [(x0(gi), 0.0), (x0(gi) + slot * 0.9, v.max(0.0))],
                    color.filled(),
                )
            })
        });
        chart
            .draw_series(bars)?
            .label(who.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let texts = vals.iter().enumerate().map(|(gi, v)| {
            let (t, y) = match v {
                Bar::Value(v) => (fmt_value(*v), v.max(0.0)),
                Bar::Failed => ("n/a".to_string(), 0.0),
                Bar::Skipped => (String::new(), 0.0),
            };
            Text::new(
                t,
                (x0(gi) + slot * 0.45, y),
                ("sans-serif", 10)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        });
        chart.draw_series(texts)?;
    }
    // Group labels, word-wrapped into the band under the axis.
    for (gi, g) in p.groups.iter().enumerate() {
        for (li, line) in wrap(g, 14).iter().enumerate() {
            chart.draw_series(std::iter::once(Text::new(
                line.clone(),
                (gi as f64 + 0.5, -band * (0.12 + 0.27 * li as f64)),
                ("sans-serif", 11)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 11))
        .draw()?;
    Ok(())
}

/// Splits `s` into lines of at most about `width` characters, at spaces.
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in s.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines.truncate(3);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0]), Some(1.5));
        assert_eq!(median(&[]), None);
        let a = [Some(2.0), None, Some(6.0), Some(1.0)];
        let b = [Some(4.0), Some(1.0), Some(3.0), Some(1.0)];
        // ratios 0.5, 2, 1 → median 1
        assert_eq!(median_ratio(&a, &b), Some(1.0));
    }

    #[test]
    fn chart_is_written_without_fonts() {
        let contenders: Vec<String> = ["direct", "dante", "microsocks", "ferrosocks"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut row = Row::new("tcp 1 stream up", "Gbit/s", Better::Higher);
        for (i, c) in contenders.iter().enumerate() {
            row.reps.insert(c.clone(), vec![Some(10.0 + i as f64)]);
        }
        let mut udp = Row::new("udp 512 B", "datagrams/s", Better::Higher);
        udp.reps.insert("direct".into(), vec![Some(100.0)]);
        udp.reps.insert("microsocks".into(), vec![None]);
        udp.errors.insert("microsocks".into(), "no UDP".into());
        let mut rows = vec![row, udp];
        for r in &mut rows {
            r.summarize(&contenders);
        }
        let dir = std::env::temp_dir().join(format!("ferrosocks-chart-{}", std::process::id()));
        let path = dir.join("c.svg");
        chart(&path, "test", &rows, &contenders).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("n/a"));
        let _ = std::fs::remove_dir_all(&dir);
        let table = peers_table(&rows, &contenders);
        assert!(table.contains("ferro/dante") && table.contains("n/a"));
    }

    #[test]
    fn a_rate_direct_cannot_run_is_in_the_table_but_not_among_the_ratios() {
        let contenders: Vec<String> = ["direct", "microsocks", "ferrosocks"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rate = |case: &str, direct: Option<f64>| {
            let mut r = Row::new(case, "sessions/s", Better::Higher);
            r.reps.insert("direct".into(), vec![direct]);
            r.reps.insert("microsocks".into(), vec![Some(10.0)]);
            r.reps.insert("ferrosocks".into(), vec![Some(15.0)]);
            if direct.is_none() {
                r.errors
                    .insert("direct".into(), format!("{NOT_APPLICABLE}: no proxy"));
            }
            r.summarize(&contenders);
            r
        };
        let rows = [
            rate("connrate 8w", Some(40.0)),
            rate("connrate 8w by name", None),
        ];
        let drawn: Vec<&str> = ratio_rows(&rows).iter().map(|r| r.case.as_str()).collect();
        assert_eq!(drawn, ["connrate 8w"]);
        let table = peers_table(&rows, &contenders);
        let by_name = table.lines().find(|l| l.contains("by name")).unwrap();
        assert!(
            by_name.contains("1.50x"),
            "ferrosocks / microsocks: {table}"
        );
    }

    #[test]
    fn a_contender_skipped_everywhere_is_left_out_of_the_chart() {
        let contenders: Vec<String> = ["direct", "haproxy", "ferrosocks"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut udp = Row::new("udp 512 B", "datagrams/s", Better::Higher);
        udp.reps.insert("direct".into(), vec![Some(100.0)]);
        udp.reps.insert("ferrosocks".into(), vec![Some(60.0)]);
        udp.reps.insert("haproxy".into(), vec![None]);
        udp.errors
            .insert("haproxy".into(), format!("{NOT_APPLICABLE}: no UDP"));
        udp.summarize(&contenders);
        let rows = [&udp];
        let drawn = series(&rows, &contenders, |r, c| {
            r.median.get(c).copied().flatten()
        });
        let names: Vec<&str> = drawn.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["direct", "ferrosocks"]);
        // Measured and failed is still shown, as "n/a".
        udp.errors.insert("haproxy".into(), "REP 0x07".into());
        let rows = [&udp];
        let drawn = series(&rows, &contenders, |r, c| {
            r.median.get(c).copied().flatten()
        });
        assert_eq!(drawn[1], ("haproxy".to_string(), vec![Bar::Failed]));
    }
}
