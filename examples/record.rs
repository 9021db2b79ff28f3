//! Records live video and audio into an MP4 through cpuguard, with the plugin
//! registered statically (no GST_PLUGIN_PATH needed). When cpuguard drains,
//! the application prints why, waits for the EOS that finalizes the file and
//! exits 0. After `--seconds` it drains on its own with the `drain` action,
//! as an application stopping a recording does.
//!
//!     cargo run --example record -- rec.mp4 --seconds 10 hold=5 interval=500
//!
//! Extra `name=value` arguments set cpuguard properties.

use gst::prelude::*;
use std::process::ExitCode;
use std::time::Duration;

struct Args {
    output: String,
    seconds: u64,
    properties: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut output = None;
    let mut seconds = 10;
    let mut properties = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            let value = args.next().ok_or("--seconds needs a value")?;
            seconds = value
                .parse()
                .map_err(|_| format!("--seconds: not a whole number of seconds: {value}"))?;
        } else if arg.contains('=') {
            properties.push(arg);
        } else if output.is_none() {
            output = Some(arg);
        } else {
            return Err(format!("unexpected argument: {arg}"));
        }
    }
    let output =
        output.ok_or("usage: record OUTPUT.mp4 [--seconds N] [cpuguard-property=value ...]")?;
    Ok(Args {
        output,
        seconds,
        properties,
    })
}

fn pipeline(output: &str, properties: &[String]) -> Result<gst::Pipeline, String> {
    // Properties go through the parser, which names a bad one.
    let properties = properties.join(" ");
    let description = format!(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc speed-preset=ultrafast tune=zerolatency ! h264parse ! cpuguard name=guard {properties} \
         ! queue ! mux. \
         audiotestsrc is-live=true ! audioconvert ! voaacenc ! aacparse ! queue ! mux. \
         mp4mux name=mux ! filesink name=sink"
    );
    let pipeline = gst::parse::launch(&description)
        .map_err(|e| format!("cannot build the pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "the description is not a pipeline".to_owned())?;
    let sink = pipeline.by_name("sink").ok_or("no filesink")?;
    sink.set_property("location", output);
    Ok(pipeline)
}

fn run(args: Args) -> Result<(), String> {
    gst::init().map_err(|e| format!("GStreamer: {e}"))?;
    gstcpuguard::plugin_register_static().map_err(|e| format!("cpuguard: {e}"))?;

    let pipeline = pipeline(&args.output, &args.properties)?;
    let guard = pipeline.by_name("guard").ok_or("no cpuguard")?;
    let main_loop = glib::MainLoop::new(None, false);
    let outcome = std::sync::Arc::new(std::sync::Mutex::new(Ok(())));
    let bus = pipeline.bus().ok_or("pipeline has no bus")?;
    let _watch = {
        let (main_loop, outcome) = (main_loop.clone(), outcome.clone());
        bus.add_watch(move |_, msg| {
            match msg.view() {
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure().filter(|s| s.name() == "cpuguard-drain") {
                        let field = |name| s.get::<String>(name).unwrap_or_default();
                        println!(
                            "cpuguard drains: {} ({}), trigger {}, load {:.2}; waiting for EOS",
                            field("reason"),
                            field("description"),
                            field("trigger"),
                            s.get::<f64>("load").unwrap_or_default()
                        );
                    }
                }
                gst::MessageView::Eos(_) => {
                    println!("EOS: the recording is finalized");
                    main_loop.quit();
                }
                gst::MessageView::Error(e) => {
                    *outcome.lock().unwrap() = Err(format!(
                        "error from {}: {}",
                        e.src().map(|s| s.path_string()).unwrap_or_default(),
                        e.error()
                    ));
                    main_loop.quit();
                }
                _ => {}
            }
            glib::ControlFlow::Continue
        })
        .map_err(|e| format!("cannot watch the bus: {e}"))?
    };

    // The application's own stop: a graceful drain, not a teardown.
    {
        let guard = guard.clone();
        glib::timeout_add_once(Duration::from_secs(args.seconds), move || {
            let started = guard.emit_by_name::<bool>("drain", &[&"stop-requested"]);
            if !started {
                println!("already draining");
            }
        });
    }

    if pipeline.set_state(gst::State::Playing).is_err() {
        // The element's own ERROR says why (e.g. invalid settings).
        let why = bus
            .pop_filtered(&[gst::MessageType::Error])
            .and_then(|msg| match msg.view() {
                gst::MessageView::Error(e) => Some(e.error().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "state change failed".to_owned());
        let _ = pipeline.set_state(gst::State::Null);
        return Err(format!("cannot start the pipeline: {why}"));
    }
    println!("recording {}", args.output);
    main_loop.run();
    let _ = pipeline.set_state(gst::State::Null);
    outcome.lock().unwrap().clone()
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("record: {err}");
            ExitCode::FAILURE
        }
    }
}
