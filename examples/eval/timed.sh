#!/bin/sh
# timed.sh OUTPUT COMMAND...: run COMMAND, which writes the file OUTPUT; write its wall time in
# seconds to OUTPUT.seconds (none when it resumed a partial OUTPUT: that time is not the whole).
# Exit status 1 of a tool (some records failed, each named on stderr) is accepted: the scores
# count those records as missing answers. Any other failure, or no output at all, stops here.
out=$1
shift
# make runs this only when OUTPUT is missing or older than its inputs: a finished OUTPUT is
# stale then, and the tools would "resume" from it (skip every id it holds); a killed run's
# OUTPUT.partial is kept, and resumed
rm -f "$out" "$out.seconds"
resumed=
if [ -e "$out.partial" ]; then resumed=yes; fi
start=$(date +%s.%N)
"$@"
rc=$?
end=$(date +%s.%N)
if [ "$rc" -gt 1 ]; then exit "$rc"; fi
if [ ! -s "$out" ]; then
    echo "timed.sh: $out: no records were written" >&2
    exit 1
fi
if [ -z "$resumed" ]; then
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }' > "$out.seconds"
fi
exit 0
