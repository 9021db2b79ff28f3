#!/bin/sh
# Runs inside the cgroup v2 VM that tests/vm.rs boots (scripts/vm.sh): builds
# each cgroup layout, runs cpuguard-run in it and leaves what happened in OUT
# (the VM's only writable directory). Nothing is judged here: the host reads
# OUT and asserts, so each case is one named Rust test.
#   guest.sh OUT CPUGUARD_RUN
set -u
out=$1
bin=$2
cg=/sys/fs/cgroup
export GST_REGISTRY="$out/gst-registry.bin" HOME="$out" TMPDIR="$out"
uname -r >"$out/kernel"
nproc >"$out/nproc"
grep -c ' /sys/fs/cgroup cgroup2 ' /proc/mounts >"$out/cgroup2" || true
echo +cpu >"$cg/cgroup.subtree_control" 2>"$out/subtree.err"
# The first registry scan under emulation takes minutes: once, unbounded, so
# that no later run's timeout pays for it.
gst-inspect-1.0 x264enc >/dev/null 2>&1

# Records the cpu.max the kernel holds for each listed group, for the host's
# expected capacity: "QUOTA PERIOD" lines ("max PERIOD" = no quota).
limits() {
  name=$1
  shift
  : >"$out/$name.limits"
  for d in "$@"; do cat "$d/cpu.max" >>"$out/$name.limits"; done
}

# sh -c "$enter" DIR CMD...: runs CMD as a member of cgroup DIR, in the
# same process (so that $! of a background one is CMD's pid).
enter='echo $$ >"$0/cgroup.procs" && exec "$@"'
member() {
  sh -c "$enter" "$@"
}

# logged FILE PATTERN N PID: waits (bounded) until cpuguard logged N lines
# matching PATTERN in FILE, or until process PID has ended (it will log no
# more).
logged() {
  n=0
  until [ "$(grep -c "$2" "$1")" -ge "$3" ] || ! kill -0 "$4" 2>/dev/null ||
    [ $n -ge 1200 ]; do
    sleep 0.1
    n=$((n + 1))
  done
}

# samples FILE N PID: the same for N samples.
samples() {
  logged "$1" 'Sample: load' "$2" "$3"
}

short="videotestsrc is-live=true num-buffers=12 ! video/x-raw,width=64,height=48,framerate=6/1 ! cpuguard ! fakesink"

# capacity NAME DIR [PREFIX...]: a short dry run in DIR, its JSON in NAME.json.
capacity() {
  name=$1
  dir=$2
  shift 2
  member "$dir" timeout 300 "$@" "$bin" --dry-run --interval 200 --load-source cgroup $short \
    >"$out/$name.json" 2>"$out/$name.err"
  echo $? >"$out/$name.rc"
}

# A flat group of 0.25 CPU.
mkdir "$cg/flat" && echo "25000 100000" >"$cg/flat/cpu.max"
limits flat "$cg/flat"
capacity flat "$cg/flat"

# A pod with a tighter limit than its container's (Kubernetes nesting).
mkdir "$cg/pod" && echo "40000 100000" >"$cg/pod/cpu.max"
echo +cpu >"$cg/pod/cgroup.subtree_control"
mkdir "$cg/pod/ctr" && echo "60000 100000" >"$cg/pod/ctr/cpu.max"
limits nested "$cg/pod" "$cg/pod/ctr"
capacity nested "$cg/pod/ctr"

# Only the parent has the cpu controller: the leaf has no cpu.max at all.
mkdir "$cg/parent" && echo "30000 100000" >"$cg/parent/cpu.max"
mkdir "$cg/parent/leaf"
limits parent_only "$cg/parent"
ls "$cg/parent/leaf" >"$out/parent_only.leaf-files"
capacity parent_only "$cg/parent/leaf"

# A 50 ms CFS period.
mkdir "$cg/period" && echo "25000 50000" >"$cg/period/cpu.max"
limits period "$cg/period"
capacity period "$cg/period"

# A cgroup namespace rooted at the limited group, with cgroup2 mounted anew
# inside it, as a container runtime does: the group is "/" from inside.
mkdir "$cg/ns" && echo "25000 100000" >"$cg/ns/cpu.max"
limits namespace "$cg/ns"
container='umount -l /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && cat /proc/self/cgroup >&2 && exec "$@"'
capacity namespace "$cg/ns" unshare --cgroup --mount sh -c "$container" sh

# A live resize from 0.25 to 2 CPUs while cpuguard samples.
mkdir "$cg/resize" && echo "25000 100000" >"$cg/resize/cpu.max"
limits resize_before "$cg/resize"
sh -c "$enter" "$cg/resize" env GST_DEBUG=cpuguard:5 GST_DEBUG_NO_COLOR=1 "$bin" --dry-run --interval 200 --load-source cgroup \
  "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=6/1 ! cpuguard ! fakesink" \
  >"$out/resize.json" 2>"$out/resize.err" &
pid=$!
# Wait on cpuguard's own sample lines (bounded), not on time.
logged "$out/resize.err" 'capacity 0.25 CPUs' 1 $pid
echo "200000 100000" >"$cg/resize/cpu.max"
limits resize "$cg/resize"
logged "$out/resize.err" 'capacity 2.00 CPUs' 1 $pid
kill -TERM $pid # cpuguard-run itself: member and env exec it
wait $pid
echo $? >"$out/resize.rc"

# Each load source in a 1-CPU group, measuring a tiny live pipeline.
mkdir "$cg/src" && echo "100000 100000" >"$cg/src/cpu.max"
limits source "$cg/src"
for s in process cgroup system psi; do
  member "$cg/src" timeout 300 "$bin" --dry-run --interval 250 --load-source $s $short \
    >"$out/source-$s.json" 2>"$out/source-$s.err"
  echo $? >"$out/source-$s.rc"
done

# A SIGTERM drain of an H.264 MP4 recording inside a 1-CPU quota.
rec="videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=10/1 ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=10 ! h264parse ! cpuguard ! mp4mux ! filesink"
sh -c "$enter" "$cg/src" env GST_DEBUG=cpuguard:5 GST_DEBUG_NO_COLOR=1 "$bin" --dry-run --interval 250 --load-source cgroup \
  $rec location="$out/sigterm.mp4" >"$out/sigterm.json" 2>"$out/sigterm.err" &
pid=$!
samples "$out/sigterm.err" 4 $pid
kill -TERM $pid # cpuguard-run itself: member and env exec it
wait $pid
echo $? >"$out/sigterm.rc"

# A cpu-limit drain: the same recording, in a group of the VM's 2 CPUs
# squeezed, once it records, to half of what it uses (a node that runs out
# of CPU), so that it saturates the quota whatever this machine's speed.
# Not less: the drain then runs on that quota too, within its timeout.
# Under emulation the encoder's start-up alone fills one CPU for about a
# second (the sigterm case's first samples read 0.87, 1.00, 0.94 of one CPU):
# 2 CPUs and 500 ms samples keep it under the hard threshold.
mkdir "$cg/limit" && echo "200000 100000" >"$cg/limit/cpu.max"
sh -c "$enter" "$cg/limit" env GST_DEBUG=cpuguard:5 GST_DEBUG_NO_COLOR=1 "$bin" --interval 500 --load-source cgroup \
  $rec location="$out/limit.mp4" >"$out/limit.json" 2>"$out/limit.err" &
pid=$!
samples "$out/limit.err" 6 $pid
usage() { awk '$1 == "usage_usec" { print $2 }' "$cg/limit/cpu.stat"; }
used=$(usage)
sleep 1 # the rate of use over one second
used=$(($(usage) - used))
# Per 100 ms period a tenth of the µs used in the second, then half of
# that, in whole 100 µs (the result gives capacities to 0.001 CPU); never
# under the kernel's 1 ms minimum.
quota=$((used / 20 / 100 * 100))
[ "$quota" -ge 1000 ] || quota=1000
echo "$used" >"$out/limit.used"
echo "$quota 100000" >"$cg/limit/cpu.max"
limits limit "$cg/limit"
wait $pid
echo $? >"$out/limit.rc"
echo done >"$out/done"
