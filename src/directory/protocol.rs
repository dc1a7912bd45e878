//! What `find` / `create` / `find_or_create` do with what a probe found: the
//! decision at the heart of the create race, shared with the loom model in
//! `tests/loom_directory.rs`.

/// Which call is deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `find`: never builds.
    Find,
    /// `create`: builds, or fails if the name exists.
    Create,
    /// `find_or_create`: hands out what exists, else builds.
    FindOrCreate,
}

/// What the probe found under the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The entry is still `Creating`.
    pub creating: bool,
    /// Its creator is alive (only asked when `creating`).
    pub creator_alive: bool,
}

/// The next step, decided under the directory lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Hand the built object out.
    Hand,
    /// A live creator is still building it: unlock, wait a little, look again.
    Wait,
    /// Its creator died half-way: free the entry (nobody gets the half-built
    /// object), then look again (`find` then reports it missing).
    Reclaim,
    /// Nothing there: build it (link a `Creating` entry, unlock, build, mark ready).
    Build,
    /// `find` of a missing name.
    Missing,
    /// `create` of an existing name.
    Exists,
}

/// The decision.
pub fn step(found: Option<Found>, mode: Mode) -> Step {
    match (found, mode) {
        (Some(f), _) if f.creating && f.creator_alive => Step::Wait,
        (Some(f), _) if f.creating => Step::Reclaim,
        (Some(_), Mode::Create) => Step::Exists,
        (Some(_), _) => Step::Hand,
        (None, Mode::Find) => Step::Missing,
        (None, _) => Step::Build,
    }
}
