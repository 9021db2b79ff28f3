//! Real recordings and the check that decides whether one survived: an x264 +
//! AAC encode into MP4 or Matroska, and a demux + parse of the file to its end
//! that measures the span of video timestamps it holds.

use gst::prelude::*;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{init, run_until_end};

/// One frame at the 30 fps every recording here uses.
pub const FRAME: Duration = Duration::from_nanos(1_000_000_000 / 30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp4,
    Matroska,
    /// Used by the crash-safety tests (tests/crash_safe.rs).
    #[allow(dead_code)]
    MpegTs,
}

impl Container {
    pub const ALL: [Container; 2] = [Container::Mp4, Container::Matroska];

    pub fn extension(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4",
            Container::Matroska => "mkv",
            Container::MpegTs => "ts",
        }
    }

    pub fn muxer(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4mux",
            Container::Matroska => "matroskamux",
            Container::MpegTs => "mpegtsmux",
        }
    }

    fn demuxer(self) -> &'static str {
        match self {
            Container::Mp4 => "qtdemux",
            Container::Matroska => "matroskademux",
            Container::MpegTs => "tsdemux",
        }
    }
}

/// A live 320x240 H.264 + AAC recording with a cpuguard (named `guard`, with
/// `guard_props`) in the video branch. The `identity` named `vrec` sits right
/// before the muxer: its pad is where the test sees what was recorded.
pub fn av_description(container: Container, location: &Path, guard_props: &str) -> String {
    format!(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse \
         ! cpuguard name=guard {guard_props} ! identity name=vrec ! queue ! mux. \
         audiotestsrc is-live=true ! audioconvert ! voaacenc ! aacparse ! queue ! mux. \
         {} name=mux ! filesink location={}",
        container.muxer(),
        location.display()
    )
}

/// First and last video PTS seen at a pad.
#[derive(Debug, Default, Clone, Copy)]
pub struct Span {
    pub first: Option<gst::ClockTime>,
    pub last: Option<gst::ClockTime>,
    pub frames: u64,
}

impl Span {
    fn note(&mut self, pts: Option<gst::ClockTime>) {
        self.frames += 1;
        if let Some(pts) = pts {
            self.first = Some(self.first.map_or(pts, |f| f.min(pts)));
            self.last = Some(self.last.map_or(pts, |l| l.max(pts)));
        }
    }

    /// Time covered by the frames: from the first frame's start to the last
    /// frame's end (its PTS plus one frame interval).
    pub fn duration(&self) -> Option<Duration> {
        let (first, last) = (self.first?, self.last?);
        Some(Duration::from_nanos((last - first).nseconds()) + FRAME)
    }
}

/// Records the PTS of every buffer leaving `pad`.
pub fn watch_pad(pad: &gst::Pad) -> Arc<Mutex<Span>> {
    let span = Arc::new(Mutex::new(Span::default()));
    let seen = span.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
            seen.lock().unwrap().note(buffer.pts());
        }
        gst::PadProbeReturn::Ok
    });
    span
}

/// What a finished file holds.
#[derive(Debug)]
pub struct Playback {
    pub streams: Vec<String>,
    pub video: Span,
}

/// Plays `path` as a player would up to the parsers: demux, parse every
/// stream to its end. A file that was not finalized (MP4 without `moov`) or is
/// cut short fails here.
pub fn play(path: &Path, container: Container) -> Result<Playback, String> {
    init();
    let pipeline = gst::Pipeline::new();
    let make = |factory: &str| {
        gst::ElementFactory::make(factory)
            .build()
            .map_err(|e| format!("{factory}: {e}"))
    };
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .map_err(|e| e.to_string())?;
    let demux = make(container.demuxer())?;
    pipeline
        .add_many([&src, &demux])
        .map_err(|e| e.to_string())?;
    src.link(&demux).map_err(|e| e.to_string())?;
    let streams = Arc::new(Mutex::new(Vec::new()));
    let video = Arc::new(Mutex::new(Span::default()));
    let pipeline_weak = pipeline.downgrade();
    let (found, video_span) = (streams.clone(), video.clone());
    demux.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let name = pad
            .current_caps()
            .and_then(|c| c.structure(0).map(|s| s.name().to_string()))
            .unwrap_or_default();
        let parser = match name.as_str() {
            "video/x-h264" => "h264parse",
            "audio/mpeg" => "aacparse",
            _ => "identity",
        };
        let parse = gst::ElementFactory::make(parser).build().unwrap();
        // async=false: a sink prerolling on the first stream would block the
        // demuxer's thread before the second stream's sink exists.
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()
            .unwrap();
        if name == "video/x-h264" {
            let counted = video_span.clone();
            sink.static_pad("sink").unwrap().add_probe(
                gst::PadProbeType::BUFFER,
                move |_, info| {
                    if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                        counted.lock().unwrap().note(b.pts());
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        }
        found.lock().unwrap().push(name);
        pipeline.add_many([&parse, &sink]).unwrap();
        parse.link(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        parse.sync_state_with_parent().unwrap();
        pad.link(&parse.static_pad("sink").unwrap()).unwrap();
    });
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot play {}: {e}", path.display()))?;
    let msgs = run_until_end(&pipeline, Duration::from_secs(60));
    let _ = pipeline.set_state(gst::State::Null);
    match msgs.last().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => {
            let mut streams = streams.lock().unwrap().clone();
            streams.sort();
            let video = *video.lock().unwrap();
            Ok(Playback { streams, video })
        }
        Some(gst::MessageView::Error(e)) => Err(format!("{}: {}", path.display(), e.error())),
        _ => Err(format!("{}: playback did not finish", path.display())),
    }
}

/// Plays the file and checks it holds the audio and the video stream.
pub fn play_av(path: &Path, container: Container) -> Result<Playback, String> {
    let playback = play(path, container)?;
    if playback.streams != ["audio/mpeg", "video/x-h264"] {
        return Err(format!(
            "{}: streams {:?}, expected audio and video",
            path.display(),
            playback.streams
        ));
    }
    Ok(playback)
}
