use std::io::{Read, Write};

use anyhow::Context;
use containerd_shim_berth_v2::flags::{Action, Flags};
use containerd_shim_berth_v2::{delete, info, serve, start};

fn main() {
    if let Err(e) = run() {
        // containerd reads start's combined output; an error goes there only on failure.
        eprintln!("containerd-shim-berth-v2: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let flags = Flags::parse(std::env::args().skip(1))?;
    if flags.version {
        println!("containerd-shim-berth-v2 {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    if flags.info {
        // containerd runs `-info` with no other flag: no id to validate.
        let mut options = Vec::new();
        std::io::stdin()
            .read_to_end(&mut options)
            .context("reading options from stdin")?;
        let mut stdout = std::io::stdout();
        stdout.write_all(&info::run(&options)?)?;
        stdout.flush()?;
        return Ok(());
    }
    flags.validate()?;
    match flags.action {
        Action::Start => {
            let mut options = Vec::new();
            std::io::stdin()
                .read_to_end(&mut options)
                .context("reading options from stdin")?;
            let reply = start::run(&flags, &options)?;
            let mut stdout = std::io::stdout();
            stdout.write_all(reply.as_bytes())?;
            stdout.flush()?;
        }
        Action::Delete => {
            let (response, warnings) = delete::run_default(&flags)?;
            for warning in warnings {
                eprintln!("{warning}");
            }
            let mut stdout = std::io::stdout();
            stdout.write_all(&response)?;
            stdout.flush()?;
        }
        Action::Serve => serve::run(&flags, None)?,
    }
    Ok(())
}
