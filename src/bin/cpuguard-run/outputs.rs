//! The files a pipeline wrote, for the result's `files` and the on-end hook:
//! every sink's `location`, and the fragments that splitmuxsink, hlssink2,
//! hlssink and multifilesink announce on the bus as they close them.

use std::path::{Path, PathBuf};

use gst::prelude::*;

/// Elements whose `location` is a pattern (`%05d`), not a file: their files
/// come from their messages.
const PATTERNED: [&str; 4] = ["splitmuxsink", "hlssink", "hlssink2", "multifilesink"];

#[derive(Default)]
pub struct Outputs {
    /// In the order first seen; relative paths resolved against our cwd.
    files: Vec<PathBuf>,
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
                if element.find_property("playlist-location").is_some() {
                    outputs.add_property(&element, "playlist-location");
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
            {
                outputs.add_property(&element, "location");
            }
        }
        outputs
    }

    fn add_property(&mut self, element: &gst::Element, name: &str) {
        let Some(pspec) = element.find_property(name) else {
            return;
        };
        if pspec.value_type() != glib::Type::STRING {
            return;
        }
        if let Ok(Some(location)) = element.property_value(name).get::<Option<String>>() {
            self.add(&location);
        }
    }

    fn add(&mut self, location: &str) {
        if location.is_empty() {
            return;
        }
        let path = Path::new(location);
        let path = if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir()
                .map(|dir| dir.join(path))
                .unwrap_or_else(|_| path.to_owned())
        };
        if !self.files.contains(&path) {
            self.files.push(path);
        }
    }

    /// An element message from the bus: a fragment closed, a segment added.
    pub fn on_message(&mut self, s: &gst::StructureRef) {
        let field = match s.name().as_str() {
            "splitmuxsink-fragment-closed" | "hls-segment-added" => "location",
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
        self.files
            .iter()
            .filter(|p| p.is_file())
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }
}

fn ancestors(element: &gst::Element) -> impl Iterator<Item = gst::Element> {
    std::iter::successors(element.parent(), |p| p.parent())
        .filter_map(|p| p.downcast::<gst::Element>().ok())
}
