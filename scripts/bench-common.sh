# Shell functions the benchmark scripts share; source it, do not run it.

# The median of the numbers on standard input (the mean of the two middle ones for an even count).
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# Run a command with its standard output discarded and print the wall-clock seconds it took. A
# command that fails is timed all the same (its messages still reach standard error).
elapsed() { local s e; s=$(date +%s.%N); "$@" >/dev/null || true; e=$(date +%s.%N); echo "$e - $s" | bc; }

# Wait until FILE has a line containing TEXT (SECONDS at most, default 10: a server's start-up line).
wait_for_line() {
    local i seconds=${3:-10}
    for i in $(seq $((seconds * 20))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "no \"$2\" in $1 after $seconds s:" >&2
    cat "$1" >&2
    return 1
}
