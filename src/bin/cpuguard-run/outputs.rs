//! The files a pipeline wrote, for the result's `files` and the on-end hook:
//! every sink's `location`; the fragments splitmuxsink announces on the bus
//! as it closes them (`splitmuxsink-fragment-closed`), as does multifilesink
//! with `post-messages=true`; and for hlssink and hlssink2 (which keep their
//! inner sinks' messages to themselves) the playlist and the segments it
//! lists, read from it at the end.

use std::path::{Path, PathBuf};

use gst::prelude::*;

/// Elements whose `location` is a pattern (`%05d`), not a file: their files
/// come from their messages.
const PATTERNED: [&str; 4] = ["splitmuxsink", "hlssink", "hlssink2", "multifilesink"];

#[derive(Default)]
pub struct Outputs {
    /// In the order first seen; relative paths resolved against our cwd.
    files: Vec<PathBuf>,
    /// HLS playlists and the directory of their segments.
    playlists: Vec<(PathBuf, PathBuf)>,
}

impl Outputs {
    /// The sinks' fixed locations and the HLS playlists, read from the
    /// elements (before the pipeline runs: a sink's location is set by then).
    pub fn of(pipeline: &gst::Pipeline) -> Self {
        let mut outputs = Outputs::default();
        for element in pipeline.iterate_recurse().into_iter().flatten() {
            let factory = element
                .factory()
                .map(|f| f.name().to_string())
                .unwrap_or_default();
            if PATTERNED.contains(&factory.as_str()) {
                if let (Some(playlist), Some(segments)) = (
                    string_property(&element, "playlist-location"),
                    string_property(&element, "location"),
                ) {
                    let playlist = absolute(&playlist);
                    let dir = absolute(&segments)
                        .parent()
                        .map_or_else(PathBuf::new, Path::to_owned);
                    outputs.playlists.push((playlist, dir));
                }
                continue;
            }
            // A sink inside a patterned bin writes that bin's fragments.
            let in_patterned = ancestors(&element).any(|a| {
                a.factory()
                    .is_some_and(|f| PATTERNED.contains(&f.name().as_str()))
            });
            if element.element_flags().contains(gst::ElementFlags::SINK)
                && !in_patterned
                && element.find_property("location").is_some()
                && let Some(location) = string_property(&element, "location")
            {
                outputs.add(&location);
            }
        }
        outputs
    }

    fn add(&mut self, location: &str) {
        let path = absolute(location);
        if !location.is_empty() && !self.files.contains(&path) {
            self.files.push(path);
        }
    }

    /// An element message from the bus: a fragment closed, a segment added.
    pub fn on_message(&mut self, s: &gst::StructureRef) {
        let field = match s.name().as_str() {
            "splitmuxsink-fragment-closed" => "location",
            "GstMultiFileSink" => "filename",
            _ => return,
        };
        if let Ok(location) = s.get::<String>(field) {
            self.add(&location);
        }
    }

    /// The files as they are now: ones deleted since (hlssink's max-files)
    /// are left out.
    pub fn existing(&self) -> Vec<String> {
        let mut files = self.files.clone();
        for (playlist, dir) in &self.playlists {
            files.push(playlist.clone());
            // Each URI line names a segment; its file is in the segments'
            // directory (a playlist-root only prefixes the URI).
            let text = std::fs::read_to_string(playlist).unwrap_or_default();
            for uri in text.lines().map(str::trim) {
                if uri.is_empty() || uri.starts_with('#') {
                    continue;
                }
                if let Some(name) = uri.rsplit('/').next().filter(|n| !n.is_empty()) {
                    let segment = dir.join(name);
                    if !files.contains(&segment) {
                        files.push(segment);
                    }
                }
            }
        }
        files
            .iter()
            .filter(|p| p.is_file())
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }
}

fn string_property(element: &gst::Element, name: &str) -> Option<String> {
    let pspec = element.find_property(name)?;
    if pspec.value_type() != glib::Type::STRING {
        return None;
    }
    element
        .property_value(name)
        .get::<Option<String>>()
        .ok()
        .flatten()
        .filter(|s| !s.is_empty())
}

/// Relative paths are resolved against our working directory (the hook's too).
fn absolute(location: &str) -> PathBuf {
    let path = Path::new(location);
    if path.is_absolute() {
        return path.to_owned();
    }
    std::env::current_dir()
        .map(|dir| dir.join(path))
        .unwrap_or_else(|_| path.to_owned())
}

fn ancestors(element: &gst::Element) -> impl Iterator<Item = gst::Element> {
    std::iter::successors(element.parent(), |p| p.parent())
        .filter_map(|p| p.downcast::<gst::Element>().ok())
}
