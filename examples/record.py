#!/usr/bin/python3
"""Records live video and audio into an MP4 through cpuguard, from Python.

The plugin is loaded from GST_PLUGIN_PATH (or the system plugin directory
after `meson install`). When cpuguard drains, the reason is printed and the
application waits for the EOS that finalizes the file, then exits 0. After
--seconds it drains on its own with the `drain` action.

    GST_PLUGIN_PATH=target/release /usr/bin/python3 examples/record.py rec.mp4 --seconds 10

Extra name=value arguments set cpuguard properties. Needs python3-gi and
gir1.2-gstreamer-1.0 (Debian's /usr/bin/python3).
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

PIPELINE = (
    "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 "
    "! x264enc speed-preset=ultrafast tune=zerolatency ! h264parse "
    "! cpuguard name=guard {properties} ! queue ! mux. "
    "audiotestsrc is-live=true ! audioconvert ! voaacenc ! aacparse ! queue ! mux. "
    "mp4mux name=mux ! filesink name=sink"
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("properties", nargs="*", metavar="name=value")
    args = parser.parse_intermixed_args()

    Gst.init(None)
    if Gst.ElementFactory.find("cpuguard") is None:
        print("record.py: no cpuguard element: set GST_PLUGIN_PATH to the "
              "directory holding libgstcpuguard.so, or install it", file=sys.stderr)
        return 1
    try:
        # The parser names a bad property or value.
        pipeline = Gst.parse_launch(PIPELINE.format(properties=" ".join(args.properties)))
    except GLib.Error as err:
        print(f"record.py: cannot build the pipeline: {err.message}", file=sys.stderr)
        return 1
    pipeline.get_by_name("sink").set_property("location", args.output)
    guard = pipeline.get_by_name("guard")

    loop = GLib.MainLoop()
    failure = []

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.ELEMENT:
            s = msg.get_structure()
            if s.get_name() == "cpuguard-drain":
                print(f"cpuguard drains: {s.get_string('reason')} "
                      f"({s.get_string('description')}), trigger {s.get_string('trigger')}, "
                      f"load {s.get_double('load')[1]:.2f}; waiting for EOS", flush=True)
        elif msg.type == Gst.MessageType.EOS:
            print("EOS: the recording is finalized", flush=True)
            loop.quit()
        elif msg.type == Gst.MessageType.ERROR:
            err, _debug = msg.parse_error()
            failure.append(f"error from {msg.src.get_path_string()}: {err.message}")
            loop.quit()

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)

    def stop():
        # The application's own stop: a graceful drain, not a teardown.
        if not guard.emit("drain", "stop-requested"):
            print("already draining", flush=True)
        return GLib.SOURCE_REMOVE

    GLib.timeout_add_seconds(args.seconds, stop)

    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        why = msg.parse_error()[0].message if msg else "state change failed"
        pipeline.set_state(Gst.State.NULL)
        print(f"record.py: cannot start the pipeline: {why}", file=sys.stderr)
        return 1
    print(f"recording {args.output}", flush=True)
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    bus.remove_signal_watch()
    if failure:
        print(f"record.py: {failure[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
