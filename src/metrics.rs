//! Counters and histograms the runtime increments where things happen, and the Prometheus text
//! exposition format (version 0.0.4) they are scraped in. Hand-written: the format is a few lines
//! of text per series and a metrics crate would bring a global registry we do not want (several
//! nodes share one process in the tests, each with its own [`Metrics`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Label pairs of one series, in a fixed order (the family's label names).
pub type Labels = Vec<(&'static str, String)>;

/// A monotonically increasing value per label set.
#[derive(Default)]
pub struct Counter {
    series: Mutex<BTreeMap<Labels, f64>>,
}

impl Counter {
    pub fn add(&self, labels: &[(&'static str, &str)], v: f64) {
        let key: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        *self.series.lock().unwrap().entry(key).or_default() += v;
    }

    pub fn inc(&self, labels: &[(&'static str, &str)]) {
        self.add(labels, 1.0);
    }

    /// The sum over every series whose `label` is `value`.
    pub fn sum_where(&self, label: &str, value: &str) -> f64 {
        let s = self.series.lock().unwrap();
        s.iter().filter(|(k, _)| k.iter().any(|(n, v)| *n == label && v == value)).map(|(_, v)| v).sum()
    }

    fn snapshot(&self) -> Vec<(Labels, f64)> {
        self.series.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Observations counted into cumulative buckets (upper bounds in seconds), with their sum.
pub struct Histogram {
    bounds: &'static [f64],
    series: Mutex<BTreeMap<Labels, HistogramSeries>>,
}

#[derive(Clone, Debug, Default)]
struct HistogramSeries {
    /// Observations at most each bound (not cumulative here; summed when written).
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

/// Bounds for latencies from a millisecond to a couple of minutes.
pub const LATENCY_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, series: Mutex::default() }
    }

    pub fn observe(&self, labels: &[(&'static str, &str)], d: Duration) {
        let v = d.as_secs_f64();
        let key: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let mut s = self.series.lock().unwrap();
        let e = s
            .entry(key)
            .or_insert_with(|| HistogramSeries { buckets: vec![0; self.bounds.len()], ..Default::default() });
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            e.buckets[i] += 1;
        }
        e.count += 1;
        e.sum += v;
    }

    /// (count, sum of seconds) over the series whose `label` is `value`.
    pub fn totals_where(&self, label: &str, value: &str) -> (u64, f64) {
        let s = self.series.lock().unwrap();
        s.iter()
            .filter(|(k, _)| k.iter().any(|(n, v)| *n == label && v == value))
            .fold((0, 0.0), |(c, t), (_, h)| (c + h.count, t + h.sum))
    }
}

/// What a node counts (one per runtime). Series are labelled by model name: only models that
/// loaded get a series, so hostile names cannot grow the registry.
pub struct Metrics {
    /// Generation requests admitted to an instance.
    pub requests: Counter,
    /// Generations that ended, by how (`stop`, `length`, `stop_sequence`, `error`, `cancelled`).
    pub finished: Counter,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    /// From a request's arrival to its first generated token.
    pub ttft: Histogram,
    /// Loads of a model (placement, stages loaded on every node, vocabulary).
    pub load: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Counter::default(),
            finished: Counter::default(),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            ttft: Histogram::new(LATENCY_BOUNDS),
            load: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

impl Metrics {
    /// The registry's own families, in exposition format.
    pub fn write(&self, out: &mut Text) {
        out.counter("exo_requests_total", "Generation requests admitted to an instance.", &self.requests);
        out.counter("exo_requests_finished_total", "Generations that ended, by reason.", &self.finished);
        out.counter("exo_prompt_tokens_total", "Prompt tokens of admitted requests.", &self.prompt_tokens);
        out.counter("exo_generated_tokens_total", "Tokens generated.", &self.generated_tokens);
        out.histogram(
            "exo_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
            &self.ttft,
        );
        out.histogram("exo_load_duration_seconds", "Time to load a model (all its stages).", &self.load);
    }
}

/// A Prometheus text exposition being written.
#[derive(Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn finish(self) -> String {
        self.out
    }

    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn line(&mut self, name: &str, labels: &[(&str, String)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(v));
    }

    pub fn counter(&mut self, name: &str, help: &str, c: &Counter) {
        self.head(name, help, "counter");
        for (l, v) in c.snapshot() {
            self.line(name, &l, v);
        }
    }

    /// A gauge or counter whose values are read at scrape time from state kept elsewhere.
    pub fn family(&mut self, name: &str, help: &str, kind: &str, samples: &[(Labels, f64)]) {
        self.head(name, help, kind);
        for (l, v) in samples {
            self.line(name, l, *v);
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, help, "histogram");
        let series: Vec<(Labels, HistogramSeries)> =
            h.series.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let bucket = format!("{name}_bucket");
        for (labels, s) in series {
            let mut cum = 0;
            for (b, n) in h.bounds.iter().zip(&s.buckets) {
                cum += n;
                let mut l = labels.clone();
                l.push(("le", number(*b)));
                self.line(&bucket, &l, cum as f64);
            }
            let mut l = labels.clone();
            l.push(("le", "+Inf".into()));
            self.line(&bucket, &l, s.count as f64);
            self.line(&format!("{name}_sum"), &labels, s.sum);
            self.line(&format!("{name}_count"), &labels, s.count as f64);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_in_text_format() {
        let m = Metrics::default();
        m.requests.inc(&[("model", "a\"b")]);
        m.requests.inc(&[("model", "a\"b")]);
        m.generated_tokens.add(&[("model", "x")], 5.0);
        m.ttft.observe(&[("model", "x")], Duration::from_millis(30));
        m.ttft.observe(&[("model", "x")], Duration::from_secs(500));
        let mut t = Text::default();
        m.write(&mut t);
        let s = t.finish();
        assert!(s.contains("# TYPE exo_requests_total counter\n"), "{s}");
        assert!(s.contains("exo_requests_total{model=\"a\\\"b\"} 2\n"), "{s}");
        assert!(s.contains("exo_generated_tokens_total{model=\"x\"} 5\n"), "{s}");
        assert!(s.contains("exo_time_to_first_token_seconds_bucket{model=\"x\",le=\"0.025\"} 0\n"), "{s}");
        assert!(s.contains("exo_time_to_first_token_seconds_bucket{model=\"x\",le=\"0.05\"} 1\n"), "{s}");
        assert!(s.contains("exo_time_to_first_token_seconds_bucket{model=\"x\",le=\"120\"} 1\n"), "{s}");
        assert!(s.contains("exo_time_to_first_token_seconds_bucket{model=\"x\",le=\"+Inf\"} 2\n"), "{s}");
        assert!(s.contains("exo_time_to_first_token_seconds_count{model=\"x\"} 2\n"), "{s}");
        assert_eq!(m.requests.sum_where("model", "a\"b"), 2.0);
        assert_eq!(m.ttft.totals_where("model", "x").0, 2);
    }
}
