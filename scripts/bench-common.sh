# Shell functions the benchmark scripts share; source it, do not run it.

# The median of the numbers on standard input (the mean of the two middle ones for an even count).
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# Run a command with its standard output discarded and print the wall-clock seconds it took. A
# command that fails is timed all the same (its messages still reach standard error).
elapsed() { local s e; s=$(date +%s.%N); "$@" >/dev/null || true; e=$(date +%s.%N); echo "$e - $s" | bc; }

# Wait until FILE has a line containing TEXT (10 s at most; a server's start-up line).
wait_for_line() {
    local i
    for i in $(seq 200); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "no \"$2\" in $1 after 10 s:" >&2
    cat "$1" >&2
    return 1
}
