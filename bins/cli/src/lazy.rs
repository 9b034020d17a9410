//! Subcommands whose arguments clap builds only when they are invoked.
//!
//! clap's derive builds every subcommand's arguments (and copies every help
//! text) each time `berth` starts, whichever subcommand runs: about a third
//! of the CPU a short `berth` command took before it connected anywhere.
//! Wrapping a subcommand's arguments in [`Lazy`] defers them with clap's
//! `Command::defer`: the subcommand is still listed with its name and
//! summary, and its arguments are built when it is parsed or its help
//! shown. What documents the whole tree (completions, man pages, the
//! Markdown reference) builds it with [`eager`], exactly as without
//! deferring.

use std::cell::Cell;

use clap::{ArgMatches, Args, Command, FromArgMatches, Subcommand};

thread_local! {
    static EAGER: Cell<bool> = const { Cell::new(false) };
}

/// `make`'s result with every [`Lazy`] built at once, on this thread.
pub fn eager<T>(make: impl FnOnce() -> T) -> T {
    let before = EAGER.with(|eager| eager.replace(true));
    let made = make();
    EAGER.with(|eager| eager.set(before));
    made
}

fn is_eager() -> bool {
    EAGER.with(Cell::get)
}

/// `T`'s arguments (or subcommands), built only when needed.
#[derive(Debug)]
pub struct Lazy<T>(pub T);

/// `augment` applied to `command`, keeping the summary and description
/// `command` had. Without deferring, clap's derive gives a subcommand its
/// variant's doc comment after its arguments' type has given it its own;
/// deferred, the type's would come last and win.
fn keeping_about(command: Command, augment: impl FnOnce(Command) -> Command) -> Command {
    let about = command.get_about().cloned();
    let long_about = command.get_long_about().cloned();
    let command = augment(command);
    let command = match about {
        Some(about) => command.about(about),
        None => command.about(None::<&'static str>),
    };
    match long_about {
        Some(long_about) => command.long_about(long_about),
        None => command.long_about(None::<&'static str>),
    }
}

fn args_of<T: Args>(command: Command) -> Command {
    keeping_about(command, T::augment_args)
}

fn args_for_update_of<T: Args>(command: Command) -> Command {
    keeping_about(command, T::augment_args_for_update)
}

fn subcommands_of<T: Subcommand>(command: Command) -> Command {
    keeping_about(command, T::augment_subcommands)
}

fn subcommands_for_update_of<T: Subcommand>(command: Command) -> Command {
    keeping_about(command, T::augment_subcommands_for_update)
}

impl<T: FromArgMatches> FromArgMatches for Lazy<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Lazy)
    }

    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Lazy)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }

    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

impl<T: Args> Args for Lazy<T> {
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }

    fn augment_args(command: Command) -> Command {
        if is_eager() {
            return T::augment_args(command);
        }
        command.defer(args_of::<T>)
    }

    fn augment_args_for_update(command: Command) -> Command {
        if is_eager() {
            return T::augment_args_for_update(command);
        }
        command.defer(args_for_update_of::<T>)
    }
}

impl<T: Subcommand> Subcommand for Lazy<T> {
    fn augment_subcommands(command: Command) -> Command {
        if is_eager() {
            return T::augment_subcommands(command);
        }
        command.defer(subcommands_of::<T>)
    }

    fn augment_subcommands_for_update(command: Command) -> Command {
        if is_eager() {
            return T::augment_subcommands_for_update(command);
        }
        command.defer(subcommands_for_update_of::<T>)
    }

    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}
