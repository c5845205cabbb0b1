//! The Prometheus text exposition format (version 0.0.4), written by hand: a family's `# HELP`
//! and `# TYPE` lines, then its samples, with label values escaped as the format asks
//! (backslash, double quote and line feed).

use std::fmt::Write;

/// A metric family's type, as its `# TYPE` line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Type {
    fn word(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// The text being written.
#[derive(Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    /// Begin family `name`: its HELP and TYPE lines. Every sample of a family must follow
    /// before the next family begins.
    pub(crate) fn family(&mut self, name: &str, kind: Type, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.word());
    }

    /// One sample: `name{labels} value`.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_into(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(&mut self.out);
        self.out.push('\n');
    }

    /// A histogram's samples: cumulative `_bucket`s with their `le` bounds (`bounds` in the
    /// family's unit, `counts` per bucket, not cumulative, the last one `+Inf`), `_sum` and
    /// `_count`.
    pub(crate) fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let mut cumulative = 0;
        let les: Vec<String> = bounds
            .iter()
            .map(|b| format_float(*b))
            .chain(std::iter::once("+Inf".to_string()))
            .collect();
        with_le.push(("le", ""));
        for (le, count) in les.iter().zip(counts) {
            cumulative += count;
            *with_le.last_mut().expect("le was pushed") = ("le", le);
            self.sample(&bucket, &with_le, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    /// The text.
    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// A sample's value.
pub(crate) trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for i64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        out.push_str(&format_float(*self));
    }
}

impl Value for bool {
    fn write(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

/// A float as Go's `strconv` would print it for Prometheus: shortest round-trip form.
fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:?}")
    }
}

/// A label value as the format wants it: `\` `"` and line feed escaped.
fn escape_label_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` and line feed escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut text = Exposition::default();
        text.family("deskd_x", Type::Gauge, "A test.\nSecond line \\ here");
        text.sample("deskd_x", &[("volume", "/srv/a\"b\\c\nd")], 1u64);
        assert_eq!(
            text.finish(),
            "# HELP deskd_x A test.\\nSecond line \\\\ here\n# TYPE deskd_x gauge\n\
             deskd_x{volume=\"/srv/a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf() {
        let mut text = Exposition::default();
        text.histogram("h", &[("k", "v")], &[0.5, 1.0], &[1, 2, 3], 4.25);
        assert_eq!(
            text.finish(),
            "h_bucket{k=\"v\",le=\"0.5\"} 1\nh_bucket{k=\"v\",le=\"1\"} 3\n\
             h_bucket{k=\"v\",le=\"+Inf\"} 6\nh_sum{k=\"v\"} 4.25\nh_count{k=\"v\"} 6\n"
        );
    }
}
