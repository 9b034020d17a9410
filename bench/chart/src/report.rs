//! The suite's results: the rows the benchmark scripts append (JSON lines),
//! merged into one document with the machine they ran on, and the table of
//! ratios printed from it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Which way is better for berth's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Times, memory.
    Lower,
    /// Throughput.
    Higher,
}

/// One measurement of berth against one peer (containerd unless said).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The script that measured it, e.g. `pull`.
    pub benchmark: String,
    /// Unique in a run, e.g. `pull-single`.
    pub id: String,
    pub label: String,
    pub unit: String,
    /// `None` when the measurement failed.
    pub berth: Option<f64>,
    pub peer: Option<f64>,
    #[serde(default = "containerd")]
    pub peer_name: String,
    pub better: Better,
    /// The ratio berth/peer to reach (at most for `Lower`, at least for
    /// `Higher`).
    #[serde(default)]
    pub target: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// berth / peer; filled in by [`Report::from_lines`].
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Whether berth does better than the peer.
    #[serde(default)]
    pub beats_peer: Option<bool>,
    /// Whether the ratio reaches the target (`None` without a target).
    #[serde(default)]
    pub meets_target: Option<bool>,
}

fn containerd() -> String {
    "containerd".to_string()
}

/// One script of the suite as it ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Script {
    pub name: String,
    /// `ok` or `failed (exit N)`.
    pub status: String,
    pub seconds: f64,
    #[serde(default)]
    pub args: String,
}

/// The merged document bench/all.sh writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// CPU, cores, kernel, memory, date, commit, peer versions: whatever
    /// the suite recorded, as it recorded it.
    pub machine: Map<String, Value>,
    pub scripts: Vec<Script>,
    pub results: Vec<Measurement>,
}

impl Measurement {
    /// Fills in the ratio and what it means.
    pub fn evaluate(&mut self) {
        self.ratio = match (self.berth, self.peer) {
            (Some(b), Some(p)) if p != 0.0 && b.is_finite() && p.is_finite() => Some(b / p),
            _ => None,
        };
        self.beats_peer = self.ratio.map(|r| match self.better {
            Better::Lower => r < 1.0,
            Better::Higher => r > 1.0,
        });
        self.meets_target = match (self.ratio, self.target) {
            (Some(r), Some(t)) => Some(match self.better {
                Better::Lower => r <= t,
                Better::Higher => r >= t,
            }),
            _ => None,
        };
    }

    /// The label with its unit, which way is better, and the peer when it
    /// is not containerd.
    pub fn title(&self) -> String {
        let arrow = match self.better {
            Better::Lower => '↓',
            Better::Higher => '↑',
        };
        let mut s = format!("{arrow} {} ({})", self.label, self.unit);
        if self.peer_name != "containerd" {
            let _ = write!(s, " vs {}", self.peer_name);
        }
        s
    }

    /// The target as a condition, e.g. `≤ 0.6`.
    pub fn target_text(&self) -> String {
        match self.target {
            None => String::new(),
            Some(t) => match self.better {
                Better::Lower => format!("≤ {}", number(t)),
                Better::Higher => format!("≥ {}", number(t)),
            },
        }
    }
}

impl Report {
    /// Reads the suite's JSON lines: `{"kind":"machine",...}` (merged into
    /// one machine record), `{"kind":"script",...}` and
    /// `{"kind":"result",...}`. Blank lines are skipped; anything else is
    /// an error naming its line.
    pub fn from_lines(text: &str) -> Result<Report, String> {
        let mut report = Report::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let at = |e: &dyn std::fmt::Display| format!("line {}: {e}", n + 1);
            let mut value: Map<String, Value> = serde_json::from_str(line).map_err(|e| at(&e))?;
            let kind = value.remove("kind");
            match kind.as_ref().and_then(Value::as_str) {
                Some("machine") => report.machine.extend(value),
                Some("script") => report
                    .scripts
                    .push(serde_json::from_value(Value::Object(value)).map_err(|e| at(&e))?),
                Some("result") => {
                    let mut m: Measurement =
                        serde_json::from_value(Value::Object(value)).map_err(|e| at(&e))?;
                    m.evaluate();
                    report.results.push(m);
                }
                other => return Err(at(&format!("unknown kind {other:?}"))),
            }
        }
        Ok(report)
    }

    /// The merged document, as bench/all.sh writes it.
    pub fn from_json(text: &str) -> Result<Report, String> {
        let mut report: Report = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for m in &mut report.results {
            m.evaluate();
        }
        Ok(report)
    }

    /// One line about the machine, for the table and the chart.
    pub fn machine_line(&self) -> String {
        let get = |k: &str| {
            self.machine
                .get(k)
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        let mut parts = Vec::new();
        let cpu = get("cpu");
        if !cpu.is_empty() {
            parts.push(format!("{cpu}, {} cores", get("cores")));
        }
        for (key, what) in [
            ("memory_gib", " GiB"),
            ("kernel", ""),
            ("containerd", ""),
            ("runc", ""),
            ("date", ""),
            ("commit", ""),
        ] {
            let v = get(key);
            if v.is_empty() {
                continue;
            }
            parts.push(match key {
                "kernel" => format!("Linux {v}"),
                "containerd" => format!("containerd {v}"),
                "runc" => format!("runc {v}"),
                "commit" => format!("berth {v}"),
                _ => format!("{v}{what}"),
            });
        }
        parts.join(", ")
    }

    /// The table of ratios, as Markdown.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| measurement | berth | compared with | berth/other | target | |\n|---|---|---|---|---|---|\n",
        );
        for m in &self.results {
            let value = |v: Option<f64>| v.map(number).unwrap_or_else(|| "failed".to_string());
            let verdict = match (m.meets_target, m.beats_peer) {
                (Some(true), _) => "met",
                (Some(false), _) => "missed",
                (None, Some(true)) => "better",
                (None, Some(false)) => "worse",
                (None, None) => "",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} {} | {} | {} | {} |",
                m.title(),
                value(m.berth),
                value(m.peer),
                m.peer_name,
                m.ratio
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".to_string()),
                m.target_text(),
                verdict,
            );
        }
        s
    }
}

/// A number as a person writes it: three significant digits or so, no
/// trailing zeros.
pub fn number(v: f64) -> String {
    let decimals = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = r#"
{"kind":"machine","cpu":"AMD EPYC","cores":2,"kernel":"6.1.0","memory_gib":23.4}
{"kind":"machine","containerd":"1.6.20~ds1","runc":"1.1.5","date":"2026-12-03","commit":"abc1234"}
{"kind":"script","name":"pull.sh","status":"ok","seconds":61.5,"args":"3"}
{"kind":"result","benchmark":"pull","id":"pull-single","label":"pull, minbase 1 layer","unit":"s","berth":1.0,"peer":4.0,"better":"lower","target":null,"peer_name":"containerd","note":""}
{"kind":"result","benchmark":"run","id":"churn-4","label":"churn, 4 workers","unit":"containers/s","berth":21.5,"peer":11.3,"better":"higher","target":2,"peer_name":"containerd","note":"failed runs: 0"}
{"kind":"result","benchmark":"ingest","id":"ingest-sha256sum","label":"ingest","unit":"MiB/s","berth":208,"peer":202,"better":"higher","target":0.8,"peer_name":"sha256sum"}
{"kind":"result","benchmark":"run","id":"run-median","label":"run","unit":"ms","berth":null,"peer":155.2,"better":"lower","target":0.6}
"#;

    #[test]
    fn lines_merge_into_one_report_with_ratios() {
        let r = Report::from_lines(LINES).unwrap();
        assert_eq!(r.machine["cpu"], "AMD EPYC");
        assert_eq!(r.machine["runc"], "1.1.5");
        assert_eq!(r.scripts.len(), 1);
        assert_eq!(r.scripts[0].status, "ok");
        assert_eq!(r.results.len(), 4);

        let pull = &r.results[0];
        assert_eq!(pull.ratio, Some(0.25));
        assert_eq!(pull.beats_peer, Some(true));
        assert_eq!(pull.meets_target, None);

        let churn = &r.results[1];
        assert_eq!(churn.better, Better::Higher);
        assert_eq!(churn.beats_peer, Some(true));
        assert_eq!(churn.meets_target, Some(false), "1.90 < 2");

        let ingest = &r.results[2];
        assert_eq!(ingest.peer_name, "sha256sum");
        assert_eq!(ingest.meets_target, Some(true));
        assert!(ingest.title().ends_with("vs sha256sum"));

        // A failed measurement has no ratio, and says so in the table.
        let failed = &r.results[3];
        assert_eq!(failed.peer_name, "containerd", "the default peer");
        assert_eq!((failed.ratio, failed.meets_target), (None, None));
        let table = r.table();
        assert!(table.contains("| ↓ run (ms) | failed | 155 containerd | - | ≤ 0.6 |  |"));
        assert!(table.contains(
            "| ↑ churn, 4 workers (containers/s) | 21.5 | 11.3 containerd | 1.90 | ≥ 2 | missed |"
        ));
    }

    #[test]
    fn the_merged_document_reads_back_the_same() {
        let r = Report::from_lines(LINES).unwrap();
        let json = serde_json::to_string_pretty(&r).unwrap();
        assert_eq!(Report::from_json(&json).unwrap(), r);
        assert_eq!(
            r.machine_line(),
            "AMD EPYC, 2 cores, 23.4 GiB, Linux 6.1.0, containerd 1.6.20~ds1, runc 1.1.5, 2026-12-03, berth abc1234"
        );
    }

    #[test]
    fn bad_lines_are_errors_that_name_the_line() {
        let err = Report::from_lines("{\"kind\":\"machine\"}\nnot json\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        let err = Report::from_lines("{\"kind\":\"other\"}").unwrap_err();
        assert!(err.contains("unknown kind"), "{err}");
        let err = Report::from_lines(r#"{"kind":"result","id":"x"}"#).unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
    }

    #[test]
    fn numbers_read_like_a_table() {
        assert_eq!(number(0.1712), "0.17");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(15.52), "15.5");
        assert_eq!(number(3021.4), "3021");
    }
}
