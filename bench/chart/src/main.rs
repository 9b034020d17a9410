//! berth-bench-chart: the last step of bench/all.sh.
//!
//! ```text
//! berth-bench-chart report ROWS.jsonl OUT.json OUT.png   merge, write, draw; print the table
//! berth-bench-chart chart IN.json OUT.png                draw again from a merged document
//! berth-bench-chart table IN.json                        print the table again
//! ```
//!
//! ROWS.jsonl holds the lines the benchmark scripts appended to
//! $BENCH_RESULTS and the ones bench/all.sh adds (machine, scripts); see
//! `report::Report::from_lines`.

mod chart;
mod report;

use report::Report;
use std::error::Error;
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: berth-bench-chart report ROWS.jsonl OUT.json OUT.png
       berth-bench-chart chart IN.json OUT.png
       berth-bench-chart table IN.json";

fn read(path: &str) -> Result<String, Box<dyn Error>> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}").into())
}

fn run(args: &[String]) -> Result<(), Box<dyn Error>> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["report", rows, json, png] => {
            let report = Report::from_lines(&read(rows)?).map_err(|e| format!("{rows}: {e}"))?;
            std::fs::write(json, serde_json::to_string_pretty(&report)? + "\n")?;
            print!("{}", report.table());
            println!("\n{}", report.machine_line());
            chart::load_font()?;
            chart::draw(&report, Path::new(png))?;
            Ok(())
        }
        ["chart", json, png] => {
            let report = Report::from_json(&read(json)?).map_err(|e| format!("{json}: {e}"))?;
            chart::load_font()?;
            chart::draw(&report, Path::new(png))
        }
        ["table", json] => {
            let report = Report::from_json(&read(json)?).map_err(|e| format!("{json}: {e}"))?;
            print!("{}", report.table());
            println!("\n{}", report.machine_line());
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench-chart: {e}");
            ExitCode::FAILURE
        }
    }
}
