//! The skew report as one self-contained HTML page: inline CSS and SVG, no
//! scripts and nothing fetched, so it opens anywhere (an artifact of a CI run, a
//! mail attachment).

use std::fmt::Write;

use super::{Example, Report, STALENESS};

/// `text` safe inside HTML text and attribute values.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The start of a report page: its title and the style every report shares.
pub(crate) fn page_head(title: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    )
}

const STYLE: &str = r#"
body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.fail{color:#b00;font-weight:bold}.frame{fill:#fafafa;stroke:#ccc}.line{fill:none;stroke:#2a6;stroke-width:2}circle{fill:#2a6}
svg text{font-size:10px;fill:#666}code{font-size:12px}"#;

/// A line chart of a feature's mismatch rate per hour.
fn chart(points: &[(String, f64)]) -> String {
    let (w, h, pad) = (640.0, 140.0, 24.0);
    let mut svg = format!(
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"><rect x="{pad}" y="4" width="{}" height="{}" class="frame"/>"#,
        w - pad - 4.0,
        h - pad - 4.0
    );
    let max = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9);
    let x = |i: usize| {
        pad + (w - pad - 8.0)
            * if points.len() > 1 {
                i as f64 / (points.len() - 1) as f64
            } else {
                0.5
            }
    };
    let y = |v: f64| 4.0 + (h - pad - 8.0) * (1.0 - v / max);
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.1)))
        .collect();
    let _ = write!(svg, r#"<polyline points="{}" class="line"/>"#, path.join(" "));
    for (i, p) in points.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.5"><title>{} {:.2}%</title></circle>"#,
            x(i),
            y(p.1),
            escape(&p.0),
            p.1 * 100.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="2" y="12">{:.1}%</text><text x="2" y="{}">0</text>"#,
        max * 100.0,
        h - pad
    );
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let _ = write!(
            svg,
            r#"<text x="{pad}" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{}</text>"#,
            h - 6.0,
            escape(&first.0),
            w - 4.0,
            h - 6.0,
            escape(&last.0)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The page.
pub fn render(report: &Report, examples: &[Example]) -> String {
    let mut out = page_head(&format!("skewless: serving skew of {}", report.job));
    let _ = write!(
        out,
        r#"<h1>Serving skew: {job}</h1><p>{rows} spine events carried the features the server used. A served value
mismatches when it differs from the replay's (numbers beyond 1e-9 relative).</p>"#,
        job = escape(&report.job),
        rows = report.rows
    );
    out.push_str("<table><tr><th>feature</th><th>compared</th><th>missing</th><th>mismatches</th><th>rate</th><th>threshold</th>");
    for bucket in STALENESS {
        let _ = write!(out, "<th>stale {}</th>", escape(bucket));
    }
    out.push_str("</tr>");
    for f in &report.features {
        let o = &f.overall;
        let class = if report.failed.contains(&f.feature) {
            " class=\"fail\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{}</td>",
            escape(&f.feature),
            o.rows - o.served_missing,
            o.served_missing,
            o.mismatches,
            o.mismatch_rate * 100.0,
            f.max_mismatch_rate
                .map_or_else(|| "-".into(), |t| format!("{:.2}%", t * 100.0))
        );
        for bucket in STALENESS {
            let line = f.by_staleness.get(bucket);
            let _ = write!(
                out,
                "<td>{} / {}</td>",
                line.map_or(0, |l| l.mismatches),
                line.map_or(0, |l| l.rows - l.served_missing)
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    for f in &report.features {
        let _ = write!(out, "<h2>{}</h2>", escape(&f.feature));
        let points: Vec<(String, f64)> = f
            .by_hour
            .iter()
            .map(|(hour, line)| (hour.clone(), line.mismatch_rate))
            .collect();
        out.push_str("<p>Mismatch rate by UTC hour</p>");
        out.push_str(&chart(&points));
        if !f.by_model_version.is_empty() {
            out.push_str(
                "<table><tr><th>model_version</th><th>compared</th><th>mismatches</th><th>rate</th></tr>",
            );
            for (model, line) in &f.by_model_version {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td></tr>",
                    escape(model),
                    line.rows - line.served_missing,
                    line.mismatches,
                    line.mismatch_rate * 100.0
                );
            }
            out.push_str("</table>");
        }
        let mine: Vec<&Example> = examples.iter().filter(|e| e.feature == f.feature).collect();
        if !mine.is_empty() {
            out.push_str(
                "<table><tr><th>row_id</th><th>user_id</th><th>ts (UTC)</th><th>served</th><th>replay</th></tr>",
            );
            for e in mine {
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td title=\"{}\">{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                    escape(&e.row_id),
                    escape(&e.user_id),
                    e.ts,
                    utc_time(e.ts),
                    escape(&e.served),
                    escape(&e.computed)
                );
            }
            out.push_str("</table>");
        }
    }
    out.push_str("</body></html>\n");
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of `seconds` since the epoch, to the millisecond.
fn utc_time(seconds: f64) -> String {
    let millis = (seconds * 1000.0).round() as i64;
    let of_day = millis.rem_euclid(86_400_000);
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        crate::model::training::utc_date(millis.div_euclid(86_400_000) as f64 * 86_400.0),
        of_day / 3_600_000,
        of_day / 60_000 % 60,
        of_day / 1000 % 60,
        of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_times_read_as_utc_to_the_millisecond() {
        assert_eq!(utc_time(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_time(1_767_225_715.194), "2026-01-01T00:01:55.194Z");
        // Rounded to the millisecond, carrying into the next day.
        assert_eq!(utc_time(1_767_311_999.999_6), "2026-01-02T00:00:00.000Z");
        assert_eq!(utc_time(951_868_799.5), "2000-02-29T23:59:59.500Z");
    }
}
