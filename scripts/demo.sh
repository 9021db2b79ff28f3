#!/usr/bin/env bash
# The cpuguard demo: a live 720p H.264 + AAC recording into MP4; a few seconds
# in, a CPU burner overloads the host. cpuguard sees the load cross its
# threshold, drains the pipeline with EOS, and the MP4 is finalized and plays.
# For contrast, the same recorder without cpuguard is killed the way an
# overloaded host kills it, and its file does not play.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo build --locked --release --lib >&2
export GST_PLUGIN_PATH="$PWD/target/release"
export GST_REGISTRY="$PWD/target/release/demo-registry.bin"

out="$PWD/out"
mkdir -p "$out"
rec="$out/demo.mp4"
log="$out/demo-messages.txt"
rm -f "$rec" "$log"

recorder() { # $1: element(s) to put after h264parse, $2: output file
  echo "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 \
    ! timeoverlay ! x264enc speed-preset=veryfast tune=zerolatency ! h264parse $1 ! queue ! mux. \
    audiotestsrc is-live=true wave=ticks ! audioconvert ! voaacenc ! aacparse ! queue ! mux. \
    mp4mux name=mux ! filesink location=$2"
}

plays() { # a finalized MP4 decodes to the end (every stream); one killed mid-write does not
  gst-launch-1.0 -q playbin uri="file://$1" video-sink="fakesink sync=false" audio-sink="fakesink sync=false" >/dev/null 2>&1
}

burner=""
cleanup() { [ -n "$burner" ] && kill "$burner" 2>/dev/null || true; }
trap cleanup EXIT

echo "== Recording $rec with cpuguard (load-source=system, soft 0.85 held 3 x 500 ms, hard 0.95)" >&2
# shellcheck disable=SC2046
gst-launch-1.0 -e -m -t $(recorder "! cpuguard load-source=system interval=500 hold=3" "$rec") >"$log" 2>&1 &
rec_pid=$!
sleep 4
echo "== Overloading the host: stress-ng --cpu $(( $(nproc) * 2 ))" >&2
stress-ng --cpu "$(( $(nproc) * 2 ))" --timeout 60s --quiet &
burner=$!

status=0
timeout 60 tail --pid="$rec_pid" -f /dev/null || { echo "recorder did not end within 60 s" >&2; kill -INT "$rec_pid"; status=1; }
wait "$rec_pid" || status=$?
cleanup; burner=""

drain=$(grep -m1 "cpuguard-drain" "$log" || true)
field() { sed -n "s/.*$1=(\(string\|double\))\([^,;]*\).*/\2/p" <<<"$drain" | sed 's/\\ / /g'; }
if [ -z "$drain" ]; then
  echo "cpuguard did not drain; messages in $log" >&2
  exit 1
fi

echo
echo "Recording:    $rec ($(stat -c %s "$rec") bytes)"
if plays "$rec"; then
  duration=$(gst-discoverer-1.0 "$rec" 2>/dev/null | sed -n 's/^ *Duration: //p' || true)
  streams=$(gst-discoverer-1.0 "$rec" 2>/dev/null | sed -n 's/^ *\(video\|audio\) #[0-9]*: /\1: /p' | paste -sd',' - | sed 's/,/, /g' || true)
  echo "Playable:     yes (decoded to the end: $streams; duration $duration)"
else
  echo "Playable:     NO"; status=1
fi
echo "End reason:   $(field reason) — $(field description | tr -d '"')"
printf 'Load:         %.2f at the %s threshold %.2f (source %s)\n' "$(field load)" "$(field trigger)" "$(field threshold)" "$(field source)"
echo "Tag:          $(grep -m1 -o 'cpuguard-end-reason: [a-z-]*' "$log" || echo missing)"
echo "Exit status:  gst-launch-1.0 exited $status after EOS"

echo
echo "== For contrast: the same recorder without cpuguard, killed like an overloaded host kills it" >&2
lost="$out/killed-without-cpuguard.mp4"
rm -f "$lost"
# shellcheck disable=SC2046
gst-launch-1.0 -e $(recorder "" "$lost") >/dev/null 2>&1 &
kill_pid=$!
sleep 4
kill -KILL "$kill_pid"; wait "$kill_pid" 2>/dev/null || true
if plays "$lost"; then
  echo "Without cpuguard: $lost plays (unexpected)"
else
  echo "Without cpuguard: $lost ($(stat -c %s "$lost") bytes) does NOT play: no moov atom, the recording is lost"
fi
exit "$status"
